"""The durability settings reported are the ones SQLite has in force, read back at open."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.sqlite.storage import SQLiteStorage


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_durability_is_read_back_from_the_writer_connection(
    tmp_path: Path, synchronous: str
) -> None:
    async with SQLiteStorage.open(tmp_path / "wf.db", synchronous=synchronous) as st:  # type: ignore[arg-type]
        assert st.durability() == {"synchronous": synchronous, "journal_mode": "wal"}
