"""Retention joins the crash campaign: a ``wf prune`` cut by kill -9 inside one of its commit
batches (SPEC §12: pruning in small batches; §10: nothing acknowledged lost).

A daemon ends a set of run trees (parents with their children, runs with many steps and
metadata), leaves others parked, and stops cleanly. Each case restarts it armed to die inside
the nth prune batch after start-up (``batch.begun``: nothing of it applied; ``batch.executed``:
applied, not committed), asks it to prune everything ended, and checks the file after the
crash: no row of any table left behind by a half-pruned run, no child whose parent went first,
no search-index entry of a deleted run, SQLite's own integrity checks clean, the parked runs
untouched. A clean restart then prunes the rest and the parked runs still finish.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from orchestrator.client import Client
from tests.crash.daemon_process import DaemonProcess
from tests.crash.test_crash_points import DYING, reached
from tests.crash.test_restart import HERE

pytestmark = pytest.mark.slow

TREES = 12  # parent + child each
BURSTS = 12  # runs of 8 steps

# Rows that belong to a run, by the column that names it.
BY_RUN_ID = ("run_tags", "waitpoints", "signal_inbox", "tokens", "timers", "stream_chunks",
             "metadata", "compensations", "run_cancel_on", "run_amendments")
BY_RUN_NO = ("steps", "step_attempts")


def orphans(db: Path) -> list[str]:
    """Every trace a half-done prune could leave; empty when the file is consistent."""
    found: list[str] = []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for table in BY_RUN_ID:
            n = conn.execute(f"SELECT count(*) FROM {table} WHERE run_id IS NOT NULL AND "
                             "run_id NOT IN (SELECT run_id FROM runs)").fetchone()[0]
            if n:
                found.append(f"{table}: {n} rows of deleted runs")
        for table in BY_RUN_NO:
            n = conn.execute(f"SELECT count(*) FROM {table} WHERE run_no NOT IN "
                             "(SELECT number FROM runs)").fetchone()[0]
            if n:
                found.append(f"{table}: {n} rows of deleted runs")
        n = conn.execute("SELECT count(*) FROM runs WHERE parent_run_id IS NOT NULL AND "
                         "parent_run_id NOT IN (SELECT run_id FROM runs)").fetchone()[0]
        if n:
            found.append(f"runs: {n} children whose parent was pruned first")
        n = conn.execute("SELECT count(*) FROM run_search WHERE rowid / 4 NOT IN "
                         "(SELECT number FROM runs)").fetchone()[0]
        if n:
            found.append(f"run_search: {n} entries of deleted runs")
        if (check := conn.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
            found.append(f"integrity_check: {check}")
        conn.execute("INSERT INTO run_search(run_search) VALUES('integrity-check')")
    return found


def statuses(db: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT run_id, status FROM runs").fetchall())


async def populate(daemon: DaemonProcess, ledger: Path) -> None:
    async with Client.connect(daemon.socket) as c:
        for i in range(TREES):
            await c.submit("crash-parent", {"ledger": str(ledger), "key": f"k{i}"},
                           run_id=f"tree-{i}")
        for i in range(BURSTS):
            await c.submit("crash-burst", {"ledger": str(ledger), "steps": 8}, run_id=f"burst-{i}")
        for i in range(2):  # parked: never pruned
            await c.submit("crash-event", {"ledger": str(ledger), "key": f"p{i}"},
                           run_id=f"parked-{i}")
        for i in range(BURSTS):
            assert (await c.wait(f"burst-{i}", timeout=15))["status"] == "completed"

        async def children_waiting() -> bool:
            runs = (await c.list(workflow_id="crash-child", status="waiting"))["runs"]
            return len(runs) == TREES

        from tests.crash.test_restart import until

        await until(children_waiting, "every child parked", timeout=15)
        for i in range(TREES):
            await c.send_event("crash.child", {"key": f"k{i}"}, event_id=f"child-{i}")
        for i in range(TREES):
            assert (await c.wait(f"tree-{i}", timeout=15))["status"] == "completed"


@pytest.mark.parametrize(("point", "nth"), [("batch.begun", 1), ("batch.executed", 1),
                                            ("batch.executed", 2)])
async def test_a_prune_cut_by_kill_9_leaves_every_run_whole_or_gone(
        tmp_path: Path, point: str, nth: int) -> None:
    daemon = DaemonProcess(tmp_path, modules=["tests.crash.crash_workflows"],
                           paths=[HERE.parents[1]])
    ledger = tmp_path / "ledger.txt"
    daemon.start()
    try:
        await populate(daemon, ledger)
    finally:
        assert daemon.stop() == 0, daemon.tail()
    before = statuses(daemon.db)
    assert len(before) == 2 * TREES + BURSTS + 2

    # Counted from the end of start-up: the only batches then are the prune's (a lease
    # renewal comes after a third of a lease, 3 s).
    daemon.start(env={"WF_CRASH_AT": f"{point}:{nth}", "WF_CRASH_AFTER": "timers.armed"})
    with contextlib.suppress(*DYING):
        async with Client.connect(daemon.socket) as c:
            await c.prune(older_than="0s")
    assert daemon.proc is not None
    code = daemon.proc.wait(timeout=10)
    err = daemon.proc.stderr.read().decode() if daemon.proc.stderr else ""
    assert code == -9 and reached(err, point, nth), (code, err[-500:], daemon.tail())

    assert orphans(daemon.db) == []
    after = statuses(daemon.db)
    assert set(after) <= set(before)
    assert after["parked-0"] == after["parked-1"] == "waiting"
    if point == "batch.begun" or nth == 1:  # the first batch never committed
        assert after == before
    else:  # the first committed: a prune cut in the middle
        assert len(after) < len(before), "the first prune batch deleted nothing"

    daemon.start()
    try:
        async with Client.connect(daemon.socket) as c:
            pruned = await c.prune(older_than="0s")
            assert pruned["runs"] == len(after) - 2
            assert orphans(daemon.db) == []
            assert set(statuses(daemon.db)) == {"parked-0", "parked-1"}
            for i in range(2):
                await c.send_event("crash.go", {"key": f"p{i}"}, event_id=f"go-{i}")
                assert (await c.wait(f"parked-{i}", timeout=15))["status"] == "completed"
    finally:
        assert daemon.stop() == 0, daemon.tail()
