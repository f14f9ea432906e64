"""Composition picks the backend from the config: ``storage.url`` means PostgreSQL, where
several daemons share the database (SPEC §13), each registered under its own lease."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.config import Config
from orchestrator.daemon.compose import Orchestrator
from orchestrator.daemon.http import gauges


def pg_config(root: Path, url: str, **storage_options: str) -> Config:
    cfg = Config.default(root)
    return dataclasses.replace(
        cfg, storage=dataclasses.replace(cfg.storage, url=url, **storage_options)  # type: ignore[arg-type]
    )


async def test_storage_url_opens_postgres_and_a_second_daemon_joins_it(
    tmp_path: Path, pg_url: str
) -> None:
    cfg = pg_config(tmp_path, pg_url)
    async with Orchestrator(cfg, import_modules=False) as orch:
        caps = orch.storage.capabilities()
        assert (caps.backend, caps.many_daemons) == ("postgres", True)
        assert not (tmp_path / "wf.db").exists()  # storage.path is not used
        # No file to measure: the size gauges have no sample (not storage.path's size).
        (tmp_path / "wf.db").write_bytes(b"x" * 100)  # a stale SQLite file must not be read
        sizes = {k: v for k, v in gauges(orch, None).items() if k.endswith("_bytes")}
        assert sizes == {"db_bytes": None, "wal_bytes": None}
        (tmp_path / "wf.db").unlink()
        async with Orchestrator(cfg, import_modules=False) as second:
            listed = await second.storage.list_daemons()
            assert len(listed) == 2 and all(d.live for d in listed)
            assert {d.daemon_id for d in listed} == {
                orch.engine.lease.daemon_id, second.engine.lease.daemon_id}  # type: ignore[union-attr]
        # A clean stop retires the daemon's row.
        assert [d.daemon_id for d in await orch.storage.list_daemons()] == [
            orch.engine.lease.daemon_id]  # type: ignore[union-attr]


async def test_sqlite_durability_setting_with_a_url_is_a_start_up_error(tmp_path: Path) -> None:
    cfg = pg_config(tmp_path, "postgresql://nobody@/none", synchronous="normal")
    with pytest.raises(ValueError, match=r"storage\.synchronous applies to SQLite only"):
        async with Orchestrator(cfg, import_modules=False):
            pass
