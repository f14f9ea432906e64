"""Every named crash point (tests.harness.launch.POINTS): the daemon SIGKILLs itself there, a clean
restart follows, and nothing acknowledged is lost or run again after its commit.

Two variants (the second only in the campaign, ``WF_CAMPAIGN=1``), each at occurrence 1 in CI
and {1, 2, 10} in the campaign:

- normal: the point is armed in a daemon serving a fresh workload (start-up points: armed in a
  fresh start; ``recovery.scan`` needs runs to recover, so it is armed in the restart after a
  kill -9 that left runs mid-step);
- during recovery: a backlog of runs in flight is killed first, then the point is armed in the
  restart, so it fires while that daemon recovers and catches the backlog up (``recovery.scan``:
  armed in two successive restarts, the second recovering a crashed recovery).

``timers.armed`` and ``migration.midway`` are passed at most once per process (once per start;
the one migration once per fresh database, since a crash rolls it back), so occurrence n means n
successive starts each killed there. ``migration.midway`` has no during-recovery variant: a
database with runs to recover is already at the newest schema, so no migration runs (there is
only ``0001``).

A point counts as reached only if the daemon died of SIGKILL *and* wrote ``crash point <point>
reached (<nth>)`` to stderr (tests/harness/launch.py); anything else fails the test, naming the
point.
After the clean restart: every acknowledged run completes with its output, no step ran more than
twice, and no step whose result was committed before a crash ran again after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.client import Client, DaemonUnreachable, RemoteError
from tests.crash import campaign
from tests.crash.daemon_process import DaemonProcess
from tests.crash.test_restart import HERE, ledger_lines, until
from tests.harness.launch import POINTS

pytestmark = pytest.mark.slow

STARTUP = {"recovery.scan", "timers.armed", "migration.midway"}
ONCE_PER_START = {"timers.armed", "migration.midway"}
WORKLOAD = sorted(POINTS - STARTUP)
VARIANTS = ["normal", "recovery"] if campaign.CAMPAIGN else ["normal"]
# Enough runs (with staggered sleeps, one event each) to pass every point 10 times.
RUNS = 12 if campaign.CAMPAIGN else 3
# Backlog sleeps: the first comes due after the restarted daemon is up (a loaded machine may
# take 2 s), the rest one by one after it, so the timer points are passed once per run during
# the catch-up (at 1.0 s + 0.15 s, timer.due:10 went unreached under a load average of 12).
BACKLOG_SLEEP, BACKLOG_STAGGER = 2.5, 0.25
# Anything the killed daemon's clients may see while it dies under them.
DYING = (DaemonUnreachable, ConnectionError, OSError, RemoteError, AssertionError)


@dataclass
class Crashes:
    """What was on disk at each crash: how long the ledger was and which steps were committed."""

    db: Path
    ledger: Path
    seen: list[tuple[int, set[tuple[str, str]]]] = field(default_factory=list)

    def record(self) -> None:
        rows: list[tuple[str, str]] = []
        # suppress: killed before the schema existed
        with contextlib.closing(sqlite3.connect(self.db)) as conn, contextlib.suppress(
            sqlite3.OperationalError
        ):
            rows = conn.execute(
                "SELECT r.run_id, s.step_id FROM steps s JOIN runs r ON r.number = s.run_no "
                "WHERE s.status = 'completed'"
            ).fetchall()
        self.seen.append((len(ledger_lines(self.ledger)), {(r, s) for r, s in rows}))


def make(tmp_path: Path, max_recoveries: int | None = None) -> DaemonProcess:
    extra = "" if max_recoveries is None else f"max_recoveries = {max_recoveries}"
    return DaemonProcess(tmp_path, modules=["tests.crash.crash_workflows"],
                         paths=[HERE.parents[1]], extra=extra)


def reached(stderr: str, point: str, nth: int) -> bool:
    return f"crash point {point} reached ({nth})" in stderr


async def expect_crash(daemon: DaemonProcess, point: str, nth: int, crashes: Crashes) -> None:
    """The daemon must die of SIGKILL at ``point`` (its nth passage); else fail loudly."""
    assert daemon.proc is not None
    try:
        code = await asyncio.to_thread(daemon.proc.wait, 10)
    except subprocess.TimeoutExpired:
        code = daemon.stop()
    err = daemon.proc.stderr.read().decode() if daemon.proc.stderr else ""
    if code != -9 or not reached(err, point, nth):
        pytest.fail(f"crash point {point}:{nth} was never reached (exit {code})\n"
                    f"stderr: {err[-1000:]}\n{daemon.tail()}")
    crashes.record()


def start_armed(daemon: DaemonProcess, point: str, nth: int, crashes: Crashes) -> bool:
    """Start with ``point:nth`` armed; True if it fired during start-up (then checked)."""
    try:
        daemon.start(env={"WF_CRASH_AT": f"{point}:{nth}"})
    except RuntimeError as exc:
        if "exited -9" not in str(exc) or not reached(str(exc), point, nth):
            pytest.fail(f"crash point {point}:{nth}: start-up failed otherwise: {exc}")
        crashes.record()
        return True
    return False


async def submit_flows(c: Client, ledger: Path, acked: list[str], sleep: float,
                       stagger: float) -> None:
    for i in range(RUNS):
        run = await c.submit("crash-flow", {"ledger": str(ledger), "sleep": sleep + stagger * i},
                             run_id=f"flow-{i}")
        acked.append(run["run_id"])


async def all_waiting(c: Client) -> bool:
    runs = (await c.list(workflow_id="crash-flow"))["runs"]
    return sum(r["status"] == "waiting" for r in runs) == RUNS


async def finish_flows(c: Client, acked: list[str]) -> None:
    """Wait until every run waits on its event (past its sleep), send the events, wait."""
    await until(lambda: all_waiting(c), "runs parked", timeout=10)

    async def on_event() -> bool:  # past every sleep: each run has registered its event wait
        runs = [await c.get(run_id) for run_id in acked]
        return all(any(w["kind"] == "EVENT" for w in r["waitpoints"]) for r in runs)

    await until(on_event, "runs past their sleeps", timeout=10)
    for i in range(RUNS):
        await c.send_event("crash.flow", {"ok": True}, event_id=f"go-{i}")
    for run_id in acked:
        await c.wait(run_id, timeout=10)


async def drive(daemon: DaemonProcess, ledger: Path, acked: list[str]) -> None:
    """Submit runs, let them sleep and park, send their event, wait for the end."""
    async with Client.connect(daemon.socket) as c:
        await submit_flows(c, ledger, acked, 0.2, 0.05)
        await finish_flows(c, acked)


def check_ledger(crashes: Crashes, acked: list[str], steps: tuple[str, ...]) -> None:
    lines = ledger_lines(crashes.ledger)
    # One line per execution ("blocking" also logs its "end").
    counts = Counter((run, step) for run, step, _, label in lines if label != "end")
    assert max(counts.values(), default=0) <= 2, counts  # at most the one in flight re-ran
    for run_id in acked:
        for step in steps:
            assert counts[(run_id, step)] >= 1, (run_id, step, counts)
    for offset, committed in crashes.seen:  # a committed step is never executed again
        again = {(run, step) for run, step, _, _ in lines[offset:]} & committed
        assert not again, f"committed before a crash, ran again after it: {sorted(again)}"


async def check(daemon: DaemonProcess, crashes: Crashes, acked: list[str]) -> None:
    async with Client.connect(daemon.socket) as c:
        # Re-sending an event with the same id is a no-op if it was committed before the crash.
        for i in range(RUNS):
            await c.send_event("crash.flow", {"ok": True}, event_id=f"go-{i}")
        for run_id in acked:
            final = await c.wait(run_id, timeout=15)
            assert final["status"] == "completed", final
            assert final["output"] == {"ok": True}
    check_ledger(crashes, acked, ("a", "b"))


@pytest.mark.parametrize("nth", campaign.occurrences())
@pytest.mark.parametrize("point", WORKLOAD)
async def test_crash_point_during_a_workload(tmp_path: Path, point: str, nth: int) -> None:
    daemon = make(tmp_path)
    crashes = Crashes(daemon.db, tmp_path / "ledger.txt")
    acked: list[str] = []
    # Counted from the end of start-up: the daemon's own start-up writes (its registration in
    # the daemons registry) pass the batch points too, and this test is about a workload.
    daemon.start(env={"WF_CRASH_AT": f"{point}:{nth}", "WF_CRASH_AFTER": "timers.armed"})
    with contextlib.suppress(*DYING):
        await drive(daemon, crashes.ledger, acked)
    await expect_crash(daemon, point, nth, crashes)
    daemon.start()
    try:
        if not acked:  # the crash came before the first acknowledgement: run the workload now
            await drive(daemon, crashes.ledger, acked)
        await check(daemon, crashes, acked)
    finally:
        assert daemon.stop() == 0, daemon.tail()


@pytest.mark.skipif("recovery" not in VARIANTS, reason="campaign only (WF_CAMPAIGN=1)")
@pytest.mark.parametrize("nth", campaign.occurrences())
@pytest.mark.parametrize("point", [*WORKLOAD, "timers.armed"])
async def test_crash_point_while_recovering_a_backlog(tmp_path: Path, point: str,
                                                      nth: int) -> None:
    """Runs parked on their sleeps are killed; the restart, armed, fires their timers, they
    register their event waits and, once the events come, finish their last step.

    For ``timers.armed`` the n start-ups each crash while the resumed runs are ``running``, and
    each charges them a recovery (by design: the engine cannot tell that their replay did not
    cause the crash), so ``daemon.max_recoveries`` is raised above n: this test is about the
    crash point, test_recovery_limit.py about the limit."""
    daemon = make(tmp_path, max_recoveries=nth + 5)
    crashes = Crashes(daemon.db, tmp_path / "ledger.txt")
    acked: list[str] = []
    daemon.start()
    async with Client.connect(daemon.socket) as c:
        await submit_flows(c, crashes.ledger, acked, BACKLOG_SLEEP, BACKLOG_STAGGER)
        await until(lambda: all_waiting(c), "the backlog parked on its sleeps", timeout=10)
    daemon.kill9()
    crashes.record()
    if point in ONCE_PER_START:
        for _ in range(nth):  # passed once per start: n starts, each killed there
            assert start_armed(daemon, point, 1, crashes), f"{point} did not fire at start"
    elif not start_armed(daemon, point, nth, crashes):
        with contextlib.suppress(*DYING):
            async with Client.connect(daemon.socket) as c:
                await finish_flows(c, acked)
        await expect_crash(daemon, point, nth, crashes)
    daemon.start()
    try:
        await check(daemon, crashes, acked)
    finally:
        assert daemon.stop() == 0, daemon.tail()


async def mid_step_backlog(daemon: DaemonProcess, ledger: Path, marker: Path) -> list[str]:
    """RUNS runs blocked inside their second step, then kill -9: all of them to recover."""
    daemon.start()
    async with Client.connect(daemon.socket) as c:
        acked = [(await c.submit("crash-mid-step", {"ledger": str(ledger),
                                                    "marker": str(marker)},
                                 run_id=f"mid-{i}"))["run_id"] for i in range(RUNS)]
    await until(lambda: sum(r[1] == "blocking" for r in ledger_lines(ledger)) == RUNS,
                "every run mid-step")
    daemon.kill9()
    return acked


# timers.armed during recovery is in test_crash_point_while_recovering_a_backlog.
START_UP_CASES = [("migration.midway", "normal"), ("timers.armed", "normal"),
                  ("recovery.scan", "normal"), ("migration.midway", "recovery"),
                  ("recovery.scan", "recovery")]


@pytest.mark.parametrize("nth", campaign.occurrences())
@pytest.mark.parametrize(("point", "variant"),
                         [case for case in START_UP_CASES if case[1] in VARIANTS])
async def test_crash_point_at_start_up(tmp_path: Path, point: str, variant: str,
                                       nth: int) -> None:
    if point == "migration.midway" and variant == "recovery":
        pytest.skip("unreachable: a database with runs to recover needs no migration")
    daemon = make(tmp_path)
    crashes = Crashes(daemon.db, tmp_path / "ledger.txt")
    acked: list[str] = []
    if point in ONCE_PER_START:  # normal: a fresh database, n starts each killed there
        for _ in range(nth):
            assert start_armed(daemon, point, 1, crashes), f"{point} did not fire at start"
        daemon.start()
        try:
            await drive(daemon, crashes.ledger, acked)
            await check(daemon, crashes, acked)
        finally:
            assert daemon.stop() == 0, daemon.tail()
        return
    # recovery.scan is passed once per recovered run: n needs n runs (RUNS >= 10).
    marker = tmp_path / "unblock"
    acked = await mid_step_backlog(daemon, crashes.ledger, marker)
    crashes.record()
    for _ in range(2 if variant == "recovery" else 1):
        assert start_armed(daemon, point, nth, crashes), f"{point}:{nth} did not fire at start"
    marker.touch()
    daemon.start()
    try:
        async with Client.connect(daemon.socket) as c:
            for run_id in acked:
                final = await c.wait(run_id, timeout=15)
                assert final["status"] == "completed", final
                assert final["output"] == ["before", "unblocked", "after"]
    finally:
        assert daemon.stop() == 0, daemon.tail()
    check_ledger(crashes, acked, ("before", "blocking", "after"))

