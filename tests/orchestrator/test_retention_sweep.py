"""The retention sweep (issue 19): prune ops carry the time budget, and the full-text index is
merged at most once per ``INDEX_MERGE_EVERY`` (a merge every sweep starved the writer under
steady load; none at all let the file grow), while ``vacuum(merges=n)`` runs at most n."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import storage as st
from orchestrator.engine import retention
from orchestrator.engine.retention import RUN_BUDGET, Retention, RetentionPolicy
from runtime.clock import ManualClock
from tests.storage.conftest import make_run


class Counting:
    """The real storage, counting the write ops that go through it by type."""

    def __init__(self, inner: st.Storage) -> None:
        self.inner = inner
        self.ops: list[Any] = []

    async def execute(self, op: Any) -> Any:
        self.ops.append(op)
        return await self.inner.execute(op)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def count(self, kind: type) -> int:
        return sum(isinstance(op, kind) for op in self.ops)


async def ended_runs(s: st.Storage, prefix: str, n: int) -> None:
    for i in range(n):
        await make_run(s, f"{prefix}{i}", created_at=1.0)
        await s.execute(st.UpdateRun(f"{prefix}{i}", at=2.0, status=st.RunStatus.COMPLETED,
                                     finished_at=2.0))


async def test_sweeps_merge_the_index_only_when_the_interval_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as opened:
        store = Counting(opened)
        sweep = Retention(store, ManualClock(start=100.0), RetentionPolicy(completed=10.0))  # type: ignore[arg-type]
        await ended_runs(opened, "a", 3)
        assert await sweep.sweep() == {"runs": 3, "events": 0}
        prunes = [op for op in store.ops if isinstance(op, st.PruneRuns)]
        assert prunes and all(op.budget == RUN_BUDGET for op in prunes)
        assert store.count(st.MergeSearchIndex) == 0  # the interval has not passed

        monkeypatch.setattr(retention, "INDEX_MERGE_EVERY", 0.0)
        await ended_runs(opened, "b", 3)
        assert await sweep.sweep() == {"runs": 3, "events": 0}
        assert store.count(st.MergeSearchIndex) == 1  # one merge per sweep at most
        assert await opened.list_runs(limit=None) == []

        store.ops.clear()
        await ended_runs(opened, "c", 2)
        await sweep.prune_runs((st.RunStatus.COMPLETED,), 50.0)
        await sweep.vacuum(merges=retention.MAX_INDEX_MERGES)  # as `wf prune` does
        assert 1 <= store.count(st.MergeSearchIndex) <= retention.MAX_INDEX_MERGES
