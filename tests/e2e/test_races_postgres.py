"""Lost wake-ups between two real daemons on one PostgreSQL (reviews/scaleout.md §2.6-2.7):
the run is owned by daemon A; its resolution is sent to daemon B after a random delay aimed at
the moment A registers the wait (signal vs registration, event vs lookback) or replays the run
(a resolution arriving while the owner runs the "running" prefix). Many runs at once; every one
must finish. The storage-level form with hundreds of iterations is
``tests/storage/test_races_postgres.py``."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.slow

RUNS = 30
LEASE = 3.0  # the owner's poll ticks every third of it; 1-2 s leases were lost under load


def _pair(make_daemon: Callable[..., Daemon], url: str) -> tuple[Daemon, Daemon]:
    def one() -> Daemon:
        return make_daemon(storage={"url": url}, daemon={"lease": f"{LEASE}s"},
                           workflows={"modules": ["race_workflows"]})
    return one(), one()


async def _finish_all(d: Daemon, run_ids: list[str], timeout: float) -> dict[str, Any]:
    """Poll until every run completed (``wait`` on a daemon that does not own a run is not
    woken by it yet: docs/decisions.md, issue 20 phase 2); what is stuck, and how the waits
    resolved (``inbox``: the resolution came first; ``live``: the wait did)."""
    deadline = time.monotonic() + timeout
    async with d.client() as c:
        while True:
            details = {r: await c.get(r) for r in run_ids}
            stuck = {r: (x["status"], [(w["waitpoint_id"], w["status"]) for w in x["waitpoints"]])
                     for r, x in details.items() if x["status"] != "completed"}
            if not stuck or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    sources = Counter(w.get("source") for x in details.values() for w in x["waitpoints"]
                      if w["kind"] != "DATETIME")
    sys.stderr.write(f"resolutions by source: {dict(sources)}\n")
    return {"stuck": stuck, "sources": sources}


async def test_signals_sent_to_another_daemon_while_the_wait_registers_all_arrive(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    a, b = _pair(make_daemon, pg_url)
    rng = random.Random(7)
    runs = [f"sig-{i}" for i in range(RUNS)]
    async with a.client() as ca, b.client() as cb:
        delays = {r: rng.uniform(0.0, 0.05) for r in runs}
        await asyncio.gather(*(ca.submit("race-signal", {"delay": delays[r]}, run_id=r)
                               for r in runs))

        async def send(run_id: str) -> None:
            # Around the moment the step returns and the wait registers on A.
            await asyncio.sleep(max(0.0, delays[run_id] + rng.uniform(0.0, 0.5)))
            await cb.signal(run_id, "go", {"run": run_id})

        await asyncio.gather(*(send(r) for r in runs))
    found = await _finish_all(b, runs, timeout=10 + 3 * LEASE)
    assert not found["stuck"], f"signals lost: {found['stuck']}"


async def test_events_sent_to_another_daemon_while_a_lookback_wait_registers_all_arrive(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    a, b = _pair(make_daemon, pg_url)
    rng = random.Random(8)
    runs = [f"ev-{i}" for i in range(RUNS)]
    async with a.client() as ca, b.client() as cb:
        delays = {r: rng.uniform(0.0, 0.05) for r in runs}
        await asyncio.gather(*(ca.submit("race-lookback", {"delay": delays[r], "k": r},
                                         run_id=r) for r in runs))

        async def send(run_id: str) -> None:
            await asyncio.sleep(max(0.0, delays[run_id] + rng.uniform(0.0, 0.5)))
            await cb.send_event("race.ev", {"k": run_id}, event_id=f"e-{run_id}")

        await asyncio.gather(*(send(r) for r in runs))
    found = await _finish_all(b, runs, timeout=10 + 3 * LEASE)
    assert not found["stuck"], f"events lost: {found['stuck']}"


async def test_a_resolution_landing_while_the_owner_replays_is_not_lost(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    """The first signal makes A (at its next poll) replay the run and run a step whose commit
    carries "running", which clears the run's resume flag; the second signal, sent to B after a
    random delay, lands between A's journal read and that commit in some runs. A must still
    see it."""
    a, b = _pair(make_daemon, pg_url)
    rng = random.Random(9)
    runs = [f"pre-{i}" for i in range(RUNS)]
    async with a.client() as ca, b.client() as cb:
        await asyncio.gather(*(ca.submit("race-prefix", {"delay": 0.1}, run_id=r)
                               for r in runs))
        for r in runs:
            while len([w for w in (await ca.get(r))["waitpoints"]
                       if w["status"] == "waiting"]) < 2:
                await asyncio.sleep(0.02)

        async def send(run_id: str) -> None:
            await cb.signal(run_id, "first", 1)
            # Spread over one poll interval of A plus the step: some land in the window.
            await asyncio.sleep(rng.uniform(0.0, LEASE / 3 + 0.15))
            await cb.signal(run_id, "second", 2)

        await asyncio.gather(*(send(r) for r in runs))
    found = await _finish_all(b, runs, timeout=10 + 3 * LEASE)
    assert not found["stuck"], f"resolutions lost: {found['stuck']}"
