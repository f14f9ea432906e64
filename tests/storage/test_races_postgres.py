"""Lost wake-ups that SQLite's single writer hid (reviews/scaleout.md §2.7), on PostgreSQL with
two storages (two daemons' writers) on one database at READ COMMITTED: many iterations, each a
registration on one writer racing the resolution on the other after random sub-millisecond
delays. No iteration may end with the resolution stored and the waitpoint still waiting.

- a signal sent while its waitpoint registers: the signal must resolve the waitpoint or land
  in the inbox the registration reads, never both miss each other;
- an event recorded while a ``lookback`` waitpoint of its type registers: likewise.

The two-daemon end-to-end form (each run must finish) is ``tests/e2e/test_races_postgres.py``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import storage as st

ITERATIONS = 200


@pytest.fixture
async def two(pg_url: str) -> AsyncIterator[tuple[st.PostgresStorage, st.PostgresStorage]]:
    async with st.PostgresStorage.open(pg_url, exclusive=False) as a, \
            st.PostgresStorage.open(pg_url, exclusive=False) as b:
        yield a, b


async def _after(delay: float, call: Callable[[], Awaitable[Any]]) -> Any:
    await asyncio.sleep(delay)
    return await call()


async def _race(rng: random.Random, first: Callable[[], Awaitable[Any]],
                second: Callable[[], Awaitable[Any]]) -> None:
    # Both batches start within ~2 ms of each other, in either order.
    await asyncio.gather(_after(rng.uniform(0, 0.002), first),
                         _after(rng.uniform(0, 0.002), second))


def _always(match: Any, payload: Any) -> bool:
    return True


async def test_a_signal_racing_its_waitpoints_registration_is_never_lost(
    two: tuple[st.PostgresStorage, st.PostgresStorage],
) -> None:
    a, b = two
    rng = random.Random(20)
    lost = []
    for i in range(ITERATIONS):
        run_id = f"sig-{i}"
        await a.create_run(st.CreateRun(run_id=run_id, workflow_id="wf", created_at=1.0))
        await _race(
            rng,
            lambda r=run_id: a.execute(st.RegisterWaitpoint(
                r, "signal:go:0", st.WaitpointKind.SIGNAL, 2.0, signal_name="go")),
            lambda r=run_id: b.send_signal(st.SendSignal(r, "go", {"n": 1}, 2.0)),
        )
        wp = await a.get_waitpoint(run_id, "signal:go:0")
        inbox = await a.signal_inbox(run_id)
        assert wp is not None
        if wp.is_waiting and inbox:
            lost.append(run_id)
    assert not lost, f"{len(lost)} of {ITERATIONS} signals lost (in the inbox, wait pending)"


async def test_an_event_racing_a_lookback_registration_is_never_lost(
    two: tuple[st.PostgresStorage, st.PostgresStorage],
) -> None:
    a, b = two
    rng = random.Random(21)
    lost = []
    for i in range(ITERATIONS):
        run_id = f"ev-{i}"
        kind = f"t{i}"  # a type per iteration: an earlier event never satisfies the lookback
        await a.create_run(st.CreateRun(run_id=run_id, workflow_id="wf", created_at=1.0))
        await _race(
            rng,
            lambda r=run_id, k=kind: a.execute(st.RegisterWaitpoint(
                r, f"event:{k}:0", st.WaitpointKind.EVENT, 5.0, event_type=k,
                lookback_from=1.0)),
            lambda k=kind: b.record_event(st.RecordEvent(f"e-{k}", k, {"v": 1}, 3.0, _always)),
        )
        wp = await a.get_waitpoint(run_id, f"event:{kind}:0")
        assert wp is not None
        if wp.is_waiting and await a.get_event(f"e-{kind}") is not None:
            lost.append(run_id)
    assert not lost, f"{len(lost)} of {ITERATIONS} events lost (stored, lookback wait pending)"


async def test_two_writers_deadlocking_retry_their_batches_instead_of_failing_callers(
    pg_url: str,
) -> None:
    """Two daemons' batches that update the same runs in opposite orders deadlock; the server
    aborts one. Its writer retries the batch whole (it was rolled back whole), so no caller
    sees the deadlock (before: STORAGE_BUSY to every caller of the victim batch)."""
    import asyncpg

    admin = await asyncpg.connect(pg_url)
    try:  # sessions opened from here on detect deadlocks fast
        await admin.execute(f"ALTER DATABASE {pg_url.split('/')[3].split('?')[0]} "
                            "SET deadlock_timeout = '20ms'")
    finally:
        await admin.close()
    async with st.PostgresStorage.open(pg_url, exclusive=False) as a, \
            st.PostgresStorage.open(pg_url, exclusive=False) as b:
        for r in ("x", "y"):
            await a.create_run(st.CreateRun(run_id=r, workflow_id="wf", created_at=1.0))
        failures = []
        for i in range(60):
            at = 2.0 + i
            one = [st.UpdateRun("x", at=at, priority=1), st.UpdateRun("y", at=at, priority=1)]
            two = [st.UpdateRun("y", at=at, priority=2), st.UpdateRun("x", at=at, priority=2)]
            got = await asyncio.gather(a.commit(one), b.commit(two), return_exceptions=True)
            failures += [g for g in got if isinstance(g, BaseException)]
        assert not failures, failures[:3]
