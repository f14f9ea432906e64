"""The retention sweep (issue 19): prune ops carry the time budget, and the full-text index is
merged at most once per ``INDEX_MERGE_EVERY`` (a merge every sweep starved the writer under
steady load; none at all let the file grow), while ``vacuum(merges=n)`` runs at most n."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import storage as st
from orchestrator.config import ConfigError, load_config
from orchestrator.engine import retention
from orchestrator.engine.retention import RUN_BUDGET, Retention, RetentionPolicy
from orchestrator.engine.settings import Settings
from runtime.clock import ManualClock
from tests.storage.conftest import deep_subset, make_run


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


def test_retention_config_becomes_the_sweeps_policy(tmp_path: Path) -> None:
    """``[retention]`` ages (SPEC §12): durations, "" or 0 to keep forever, the SPEC's defaults
    when the section is absent; a negative age is refused naming its key."""
    conf = tmp_path / "config.toml"
    conf.write_text('[retention]\ncompleted = "1h"\nfailed = ""\ncancelled = 0\n'
                    'events = "2d"\n')
    policy = Settings.from_config(load_config(conf)).retention
    assert policy == RetentionPolicy(completed=3600.0, failed=None, cancelled=None,
                                     events=172800.0)
    conf.write_text("")
    assert Settings.from_config(load_config(conf)).retention == RetentionPolicy(
        completed=30 * 86400.0, failed=90 * 86400.0, cancelled=90 * 86400.0,
        events=7 * 86400.0)
    conf.write_text('[retention]\nfailed = "-1s"\n')
    with pytest.raises(ConfigError, match=r"retention\.failed"):
        load_config(conf)


async def test_a_sweep_applies_each_status_groups_age_and_the_events_age(tmp_path: Path) -> None:
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as s:
        ended = {"c-old": (st.RunStatus.COMPLETED, 10.0), "c-new": (st.RunStatus.COMPLETED, 95.0),
                 "f-old": (st.RunStatus.COMPENSATED, 10.0), "f-mid": (st.RunStatus.FAILED, 60.0),
                 "x-old": (st.RunStatus.CANCELLED, 10.0)}
        for run_id, (status, at) in ended.items():
            await make_run(s, run_id, created_at=1.0)
            await s.execute(st.UpdateRun(run_id, at=at, status=status, finished_at=at))
        await make_run(s, "live", created_at=1.0)  # never ended: never pruned
        for i, at in enumerate((10.0, 50.0, 90.0)):
            await s.execute(st.RecordEvent(f"e{i}", "t", {}, at, deep_subset))
        # completed after 20 s, failed group after 50 s, cancelled kept forever, events 30 s.
        sweep = Retention(s, ManualClock(start=100.0),
                          RetentionPolicy(completed=20.0, failed=50.0, events=30.0))
        assert await sweep.sweep() == {"runs": 2, "events": 2}
        left = sorted(r.run_id for r in await s.list_runs(limit=None))
        assert left == ["c-new", "f-mid", "live", "x-old"]
        assert [e.event_id for e in await s.recent_events(limit=10)] == ["e2"]
