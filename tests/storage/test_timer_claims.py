"""The set-based claim of due timers (SQLite, ``storage/sqlite/timer_claims.py``) against the
op-by-op firing it replaced (``mutations.fire_timer`` per due timer, PostgreSQL's form): the
same fired timers in the same order, the same waitpoint records, and the same rows after."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest

import storage as st
from storage import ops
from storage.sqlite import mutations, timer_claims
from tests.storage.conftest import make_run


def _op_by_op(conn: sqlite3.Connection, op: ops.ClaimDueTimers) -> tuple[ops.FiredTimer, ...]:
    due = conn.execute(
        "SELECT timer_id FROM timers WHERE due_at <= ? ORDER BY due_at, timer_id LIMIT ?",
        (op.before, op.limit)).fetchall()
    fired = (mutations.fire_timer(conn, ops.FireTimer(t, op.before)) for (t,) in due)
    return tuple(f for f in fired if f is not None)


def _rows(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {
        "timers": conn.execute("SELECT * FROM timers ORDER BY timer_id").fetchall(),
        "waitpoints": conn.execute("SELECT * FROM waitpoints ORDER BY run_id, wp_id").fetchall(),
        "runs": conn.execute("SELECT run_id, needs_resume, journal_seq FROM runs "
                             "ORDER BY run_id").fetchall(),
    }


async def _plant(path: Path, rng: random.Random) -> None:
    """Runs with sleeps, waits with a timeout, both on one waitpoint, waitpoints already
    resolved, several due on one run, schedule and batch timers: due and not yet due."""
    async with st.SQLiteStorage.open(path) as storage:
        for r in range(40):
            run_id = f"run-{r:02d}"
            await make_run(storage, run_id, created_at=1.0)
            for w in range(rng.randint(1, 4)):
                wp_id = f"wp-{w}"
                shape = rng.choice(("sleep", "timeout", "both", "resolved", "retry"))
                due = rng.choice((10.0, 20.0, 30.0, 50.0, 200.0)) + rng.random()
                await storage.execute(ops.RegisterWaitpoint(
                    run_id, wp_id,
                    st.WaitpointKind.DATETIME if shape != "timeout" else st.WaitpointKind.EVENT,
                    registered_at=2.0,
                    event_type="e" if shape == "timeout" else None,
                    due_at=due if shape in ("sleep", "both", "resolved", "retry") else None,
                    timeout_at=due if shape == "timeout" else None,
                    timer_kind=st.TimerKind.RETRY if shape == "retry" else None))
                if shape == "both":  # a second timer on the same waitpoint
                    await storage.execute(ops.UpsertTimer(
                        f"extra:{run_id}:{wp_id}", st.TimerKind.TIMEOUT,
                        due + rng.choice((-1.0, 1.0)), 2.0, run_id, wp_id))
                if shape == "resolved":
                    await storage.execute(ops.ResolveWaitpoint(
                        run_id, wp_id, 3.0, st.ResolutionSource.LIVE, payload={"x": 1}))
                    await storage.execute(ops.UpsertTimer(
                        f"stale:{run_id}:{wp_id}", st.TimerKind.SLEEP, due, 2.0, run_id, wp_id))
        for s in range(5):
            await storage.execute(ops.UpsertTimer(
                f"sched-{s}", rng.choice((st.TimerKind.SCHEDULE, st.TimerKind.BATCH)),
                rng.choice((15.0, 300.0)), 1.0, payload=["wf", f"k{s}"]))
            await storage.execute(ops.UpsertTimer(
                f"start-{s}", st.TimerKind.START, rng.choice((15.0, 300.0)), 1.0,
                run_id=f"run-{s:02d}"))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
async def test_the_set_based_claim_fires_what_firing_one_by_one_fires(
    tmp_path: Path, seed: int,
) -> None:
    rng = random.Random(seed)
    await _plant(tmp_path / "a.db", rng)
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")
    a = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    b = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    try:
        assert _rows(a) == _rows(b)
        total = 0
        for before, limit in ((25.0, 7), (25.0, 1000), (60.0, 3), (60.0, 1000), (500.0, 1000)):
            a.execute("BEGIN")
            b.execute("BEGIN")
            expected = _op_by_op(a, ops.ClaimDueTimers(before, limit))
            got = timer_claims.claim_due_timers(b, ops.ClaimDueTimers(before, limit))
            a.execute("COMMIT")
            b.execute("COMMIT")
            assert got == expected
            assert _rows(b) == _rows(a)
            total += sum(1 for f in got if f.waitpoint is not None)
        assert total > 40  # not vacuous: many resolutions, several per run
        # Only schedules and batches stay (a lease on): their fire moves them on.
        assert {k for (k,) in a.execute("SELECT kind FROM timers")} <= {"schedule", "batch"}
    finally:
        a.close()
        b.close()
