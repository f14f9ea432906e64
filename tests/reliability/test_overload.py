"""Overload (issue 10 item 9, CI variant): 10x ``daemon.max_active_runs`` submitted at once to a
real daemon. Nothing is dropped, every run completes, and no more than the limit run at once
(the rest wait ``pending``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from orchestrator.client import Client
from tests.reliability.conftest import RelDaemon

pytestmark = pytest.mark.slow

LIMIT = 20
RUNS = 10 * LIMIT


async def test_ten_times_max_active_runs_at_once(make_rel_daemon: Callable[..., RelDaemon]) -> None:
    d = make_rel_daemon(daemon={"max_active_runs": LIMIT})
    clients = [await Client.open(d.socket) for _ in range(10)]
    try:
        async with d.client() as watcher:
            seen_pending = 0
            max_running = 0
            max_actors = 0
            seen_queued = 0
            min_free = LIMIT
            stop = asyncio.Event()

            async def observe() -> None:
                nonlocal seen_pending, max_running, max_actors, seen_queued, min_free
                while not stop.is_set():
                    stats = await watcher.stats()
                    runs = stats["runs"]
                    seen_pending = max(seen_pending, runs.get("pending", 0))
                    max_running = max(max_running, runs.get("running", 0))
                    min_free = min(min_free, stats["actors"]["slots_free"])
                    max_actors = max(max_actors, stats["actors"]["active_actors"])
                    seen_queued = max(seen_queued, stats["actors"]["runs_queued"])
                    await asyncio.sleep(0.01)

            observer = asyncio.create_task(observe())
            acked = await asyncio.gather(*(
                clients[i % 10].submit("rel-work", {"n": i, "steps": 3, "seconds": 0.05},
                                       run_id=f"ov-{i:03d}")
                for i in range(RUNS)
            ))
            assert sorted(r["run_id"] for r in acked) == [f"ov-{i:03d}" for i in range(RUNS)]
            done = await asyncio.wait_for(asyncio.gather(*(
                clients[i % 10].wait(f"ov-{i:03d}", timeout=30) for i in range(RUNS)
            )), 40)
            stop.set()
            await observer
            assert [r["status"] for r in done] == ["completed"] * RUNS
            assert [r["output"] for r in done] == [{"total": 3, "n": i} for i in range(RUNS)]
            stats = await watcher.stats()
            assert stats["runs"] == {"completed": RUNS}
            assert stats["actors"]["slots_free"] == LIMIT
            # Overloaded: runs beyond the limit waited pending, never more than LIMIT ran.
            assert seen_pending > 0
            assert max_running <= LIMIT
            # The runs beyond the limit waited as queue entries: no actor (task) for them.
            assert seen_queued > 0
            assert max_actors <= LIMIT
            assert min_free >= 0
            assert d.alive()
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_queued_runs_start_by_priority_then_age(
    make_rel_daemon: Callable[..., RelDaemon],
) -> None:
    d = make_rel_daemon(daemon={"max_active_runs": 1})
    async with d.client() as c:
        # The blocker holds the only slot while the others queue behind it.
        await c.submit("rel-work", {"n": 0, "steps": 1, "seconds": 0.5}, run_id="blocker")
        for run_id, priority in [("low-1", 0), ("high", 5), ("low-2", 0), ("mid", 1)]:
            await c.submit("rel-work", {"n": 1, "steps": 1, "seconds": 0.0}, run_id=run_id,
                           priority=priority)
        runs = [await c.wait(r, timeout=20) for r in ("blocker", "high", "mid", "low-1", "low-2")]
    assert [r["status"] for r in runs] == ["completed"] * 5
    started = [r["started_at"] for r in runs]
    assert started == sorted(started), runs
