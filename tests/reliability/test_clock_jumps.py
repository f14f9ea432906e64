"""Clock jumps (issue 10 item 8, CI variant) on the embedded engine with an injected clock.

``JumpClock``: wall time = real time + an offset the test moves; monotonic time and sleeping
are real. SPEC §4 "Clocks": a timer never fires while the wall clock reads earlier than its due
time; a backward jump delays timers and loses none; a forward jump fires what became due.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Orchestrator
from tests.reliability import rel_workflows
from tests.reliability.conftest import TERMINAL, embedded_config, wait_until

HOUR = 3600.0
DAY = 24 * HOUR
LATENESS = 2.0  # issue 10 item 8: lateness <= 2 s after a forward jump


class JumpClock:
    """Implements ``runtime.clock.Clock``: real time shifted by ``offset`` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def jump(self, seconds: float) -> float:
        """Move the wall clock; return the new wall time."""
        self.offset += seconds
        return self.now()


@pytest.fixture
def clock() -> Iterator[JumpClock]:
    c = JumpClock()
    rel_workflows.WALL = c.now
    rel_workflows.STAMPS.clear()
    yield c
    rel_workflows.WALL = time.time


@pytest.fixture
async def orch(tmp_path: Path, clock: JumpClock) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(embedded_config(tmp_path), clock=clock, import_modules=False) as o:
        yield o


async def submit_sleepers(orch: Orchestrator, durations: dict[str, float]) -> dict[str, float]:
    """Submit one ``rel-sleep-stamp`` run per entry; wait until every one is parked on its
    timer; return each run's due time as stored with its waitpoint."""
    await asyncio.gather(*(orch.submit("rel-sleep-stamp", {"seconds": s}, run_id=r)
                           for r, s in durations.items()))
    due: dict[str, float] = {}

    async def all_parked() -> bool:
        for run_id in durations.keys() - due.keys():
            run = await orch.get(run_id)
            if run["status"] == "waiting" and run["waitpoints"]:
                due[run_id] = run["waitpoints"][0]["due_at"]
        return len(due) == len(durations)

    await wait_until(all_parked, timeout=15, what="every sleeper parked", interval=0.1)
    return due


async def finished(orch: Orchestrator, run_ids: Any, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def check() -> bool:
        for run_id in set(run_ids) - out.keys():
            run = await orch.get(run_id)
            if run["status"] in TERMINAL:
                out[run_id] = run
        return len(out) == len(run_ids)

    await wait_until(check, timeout=timeout, what="every sleeper finished", interval=0.05)
    return out


def check_fired_once_not_early(runs: dict[str, Any], due: dict[str, float]) -> None:
    for run_id, run in runs.items():
        assert run["status"] == "completed", run
        wp = run["waitpoints"][0]
        assert wp["status"] == "resolved"
        assert wp["resolved_at"] >= due[run_id], f"{run_id} fired early: {wp}"
        assert run["output"]["woke"] >= due[run_id], f"{run_id} resumed early: {run}"
        assert [s["step_id"] for s in run["steps"]] == ["stamp"]
        assert rel_workflows.STAMPS[run_id] == 1, f"{run_id} resumed more than once"


async def test_backward_jump_delays_every_timer_and_forward_jump_fires_all(
    orch: Orchestrator, clock: JumpClock
) -> None:
    rng = random.Random(8)
    durations = {f"t{i:03d}": round(rng.uniform(1.0, 3.0), 3) for i in range(200)}
    due = await submit_sleepers(orch, durations)
    assert (await orch.stats())["timers"] == 200

    clock.jump(-HOUR)
    # Real time passes every due time; the wall clock reads an hour earlier: nothing fires.
    latest = max(due.values())
    while time.time() < latest + 0.5:
        await asyncio.sleep(0.1)
    stats = await orch.stats()
    assert stats["timers"] == 200, "a timer fired while the wall clock read before its due time"
    assert stats["runs"] == {"waiting": 200}
    assert not rel_workflows.STAMPS

    jumped_at = clock.jump(HOUR)
    runs = await finished(orch, durations, timeout=LATENESS + 8)
    check_fired_once_not_early(runs, due)
    lateness = max(r["waitpoints"][0]["resolved_at"] for r in runs.values()) - jumped_at
    assert lateness <= LATENESS, f"fired {lateness:.2f}s after the forward jump"
    stats = await orch.stats()
    assert stats["timers"] == 0
    assert stats["runs"] == {"completed": 200}
    assert stats["scheduler"]["timers_fired"] == 200


async def test_forward_jump_of_a_day_fires_pending_long_timers_promptly(
    orch: Orchestrator, clock: JumpClock
) -> None:
    rng = random.Random(9)
    durations = {f"d{i:03d}": round(rng.uniform(600, 20 * HOUR), 3) for i in range(200)}
    due = await submit_sleepers(orch, durations)
    await asyncio.sleep(0.3)
    assert (await orch.stats())["runs"] == {"waiting": 200}

    jumped_at = clock.jump(DAY)
    runs = await finished(orch, durations, timeout=LATENESS + 8)
    check_fired_once_not_early(runs, due)
    lateness = max(r["waitpoints"][0]["resolved_at"] for r in runs.values()) - jumped_at
    assert lateness <= LATENESS, f"fired {lateness:.2f}s after the forward jump"
    assert (await orch.stats())["scheduler"]["timers_fired"] == 200


async def test_jumps_while_the_engine_is_down(tmp_path: Path, clock: JumpClock) -> None:
    """Stop, jump back an hour, start: nothing fires early. Stop, jump forward a day, start:
    everything due fires at start-up, once."""
    cfg = embedded_config(tmp_path)
    short = {f"s{i:02d}": 1.0 + i / 50 for i in range(50)}
    long = {f"l{i:02d}": 6 * HOUR + i for i in range(50)}
    async with Orchestrator(cfg, clock=clock, import_modules=False) as orch:
        due = await submit_sleepers(orch, {**short, **long})

    clock.jump(-HOUR)
    async with Orchestrator(cfg, clock=clock, import_modules=False) as orch:
        while time.time() < max(due[r] for r in short) + 0.5:
            await asyncio.sleep(0.1)
        stats = await orch.stats()
        assert stats["timers"] == 100
        assert stats["runs"] == {"waiting": 100}
    assert not rel_workflows.STAMPS

    clock.jump(HOUR + DAY)
    started = clock.now()
    async with Orchestrator(cfg, clock=clock, import_modules=False) as orch:
        runs = await finished(orch, due, timeout=LATENESS + 8)
        check_fired_once_not_early(runs, due)
        lateness = max(r["waitpoints"][0]["resolved_at"] for r in runs.values()) - started
        assert lateness <= LATENESS
        stats = await orch.stats()
        assert stats["timers"] == 0
        assert stats["runs"] == {"completed": 100}
