"""Every named crash point (storage.faults.POINTS), occurrence 1: the daemon SIGKILLs itself
there, a clean restart follows, and nothing acknowledged is lost or run twice after commit."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.client import Client, DaemonUnreachable, RemoteError
from storage.faults import POINTS
from tests.crash import campaign
from tests.crash.daemon_process import DaemonProcess
from tests.crash.test_restart import HERE, ledger_lines, until

pytestmark = pytest.mark.slow

STARTUP = {"recovery.scan", "timers.armed", "migration.midway"}
# Enough runs (with staggered sleeps, one event each) to pass every point 10 times.
RUNS = 12 if campaign.CAMPAIGN else 3


def make(tmp_path: Path) -> DaemonProcess:
    return DaemonProcess(tmp_path, modules=["tests.crash.crash_workflows"],
                         paths=[HERE.parents[1]])


async def drive(daemon: DaemonProcess, ledger: Path, acked: list[str]) -> None:
    """Submit runs, let them sleep and park, send their event, wait for the end."""
    async with Client.connect(daemon.socket) as c:
        for i in range(RUNS):
            run = await c.submit("crash-flow", {"ledger": str(ledger), "sleep": 0.2 + 0.05 * i},
                                 run_id=f"flow-{i}")
            acked.append(run["run_id"])

        async def parked() -> bool:
            runs = (await c.list(workflow_id="crash-flow"))["runs"]
            return sum(r["status"] == "waiting" for r in runs) == RUNS

        await until(parked, "runs parked on the event", timeout=10)
        await asyncio.sleep(0.3 + 0.05 * RUNS)  # past every sleep: all wait on the event
        for i in range(RUNS):
            await c.send_event("crash.flow", {"ok": True}, event_id=f"go-{i}")
        for run_id in acked:
            await c.wait(run_id, timeout=10)


async def check(daemon: DaemonProcess, ledger: Path, acked: list[str]) -> None:
    async with Client.connect(daemon.socket) as c:
        # Re-sending an event with the same id is a no-op if it was committed before the crash.
        for i in range(RUNS):
            await c.send_event("crash.flow", {"ok": True}, event_id=f"go-{i}")
        for run_id in acked:
            final = await c.wait(run_id, timeout=15)
            assert final["status"] == "completed", final
            assert final["output"] == {"ok": True}
    counts = Counter((run, step) for run, step, _, _ in ledger_lines(ledger))
    assert max(counts.values(), default=0) <= 2, counts  # at most the one in flight re-ran
    for run_id in acked:
        assert counts[(run_id, "a")] >= 1 and counts[(run_id, "b")] >= 1


@pytest.mark.parametrize("nth", campaign.occurrences())
@pytest.mark.parametrize("point", sorted(POINTS - STARTUP))
async def test_crash_point_during_a_workload(tmp_path: Path, point: str, nth: int) -> None:
    daemon = make(tmp_path)
    ledger = tmp_path / "ledger.txt"
    acked: list[str] = []
    daemon.start(env={"WF_CRASH_AT": f"{point}:{nth}"})
    with contextlib.suppress(DaemonUnreachable, ConnectionError, OSError, RemoteError,
                             AssertionError):
        await drive(daemon, ledger, acked)
    assert daemon.proc is not None
    try:
        code = await asyncio.to_thread(daemon.proc.wait, 10)
    except subprocess.TimeoutExpired:
        code = daemon.stop()
    assert code == -9, f"crash point {point} was never reached\n{daemon.tail()}"
    daemon.start()
    try:
        if not acked:  # the crash came before the first acknowledgement: run the workload now
            await drive(daemon, ledger, acked)
        await check(daemon, ledger, acked)
    finally:
        assert daemon.stop() == 0, daemon.tail()


async def test_crash_points_at_start_up(tmp_path: Path) -> None:
    daemon = make(tmp_path)
    for point in ("migration.midway", "timers.armed"):
        with pytest.raises(RuntimeError, match="exited -9"):
            daemon.start(env={"WF_CRASH_AT": f"{point}:1"})
    # recovery.scan needs a run to recover: one killed mid-step.
    daemon.start()
    ledger = tmp_path / "ledger.txt"
    marker = tmp_path / "unblock"
    async with Client.connect(daemon.socket) as c:
        run_id = (await c.submit("crash-mid-step", {"ledger": str(ledger),
                                                    "marker": str(marker)}))["run_id"]
    await until(lambda: any(r[1] == "blocking" for r in ledger_lines(ledger)), "mid-step")
    daemon.kill9()
    with pytest.raises(RuntimeError, match="exited -9"):
        daemon.start(env={"WF_CRASH_AT": "recovery.scan:1"})
    marker.touch()
    daemon.start()
    try:
        async with Client.connect(daemon.socket) as c:
            assert (await c.wait(run_id, timeout=10))["status"] == "completed"
    finally:
        assert daemon.stop() == 0, daemon.tail()
