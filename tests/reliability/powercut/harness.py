"""Shared pieces of the power-cut and fsync-EIO checks: the shim build, a daemon running the
``pc-`` workflows, the workload that records every acknowledgement, and the check after the
restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client, DaemonUnreachable, RemoteError
from tests.crash.daemon_process import DaemonProcess
from tests.reliability.powercut.apply import TearStats, power_cut
from tests.reliability.powercut_workflows import step_value

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
STEPS = 3
PAD = 600  # bytes per step output: a few WAL frames per batch, so tears land inside commits
WAITERS = 4
_CLIENT_GONE = (DaemonUnreachable, ConnectionError, OSError, asyncio.IncompleteReadError)


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the LD_PRELOAD shim with the system compiler (skipped without one, unless CI)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no C compiler: the power-cut shim cannot be built (install gcc)")
        pytest.skip("no C compiler (cc/gcc) to build the power-cut LD_PRELOAD shim")
    out = tmp_path_factory.mktemp("shim") / "shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out),
                    str(HERE / "shim.c"), "-ldl"], check=True)
    return out


def pc_daemon(workdir: Path) -> DaemonProcess:
    return DaemonProcess(workdir.resolve(), modules=["tests.reliability.powercut_workflows"],
                         paths=[REPO])


def shim_env(daemon: DaemonProcess, so: Path, **extra: str) -> dict[str, str]:
    """Environment for one shimmed incarnation (the restart gets none of it)."""
    return {"LD_PRELOAD": str(so), "WF_SHIM_DB": str(daemon.db),
            "WF_SHIM_LOG": str(daemon.workdir / "shim.log"), **extra}


@dataclass
class Acks:
    """Everything the daemon acknowledged before it died."""

    submitted: list[str] = field(default_factory=list)
    completed: dict[str, Any] = field(default_factory=dict)  # run -> output
    steps: dict[tuple[str, str], Any] = field(default_factory=dict)  # (run, step) -> output
    errors: list[str] = field(default_factory=list)  # error replies (codes)

    def figures(self) -> str:
        return (f"acks: {len(self.submitted)} submits, {len(self.steps)} steps, "
                f"{len(self.completed)} completions")


def run_input(ledger: Path) -> dict[str, Any]:
    return {"ledger": str(ledger), "steps": STEPS, "pad": PAD}


def expected_output(run_id: str) -> list[str]:
    return [step_value(run_id, i, PAD) for i in range(STEPS)]


async def workload(daemon: DaemonProcess, runs: int, acks: Acks, rng: random.Random,
                   stop: asyncio.Event) -> None:
    """Submit ``runs`` runs while waiting on them and polling their steps, recording each
    acknowledgement, until the daemon goes away or ``stop`` is set."""
    ledger = daemon.workdir / "ledger.txt"
    seen = asyncio.Event()

    async def submit() -> None:
        async with Client.connect(daemon.socket) as c:
            for i in range(runs):
                try:
                    run = await c.submit("pc-chain", run_input(ledger), run_id=f"pc-{i}")
                except RemoteError as exc:
                    acks.errors.append(exc.code)
                    continue
                acks.submitted.append(run["run_id"])
                seen.set()

    async def wait(k: int) -> None:
        async with Client.connect(daemon.socket) as c:
            i = k
            while i < runs:
                if i >= len(acks.submitted):
                    if submitting.done():
                        return
                    await asyncio.sleep(0.01)
                    continue
                run_id = acks.submitted[i]
                try:
                    final = await c.wait(run_id, timeout=30)
                except RemoteError as exc:
                    acks.errors.append(exc.code)
                    return
                if final["status"] == "completed":
                    acks.completed[run_id] = final["output"]
                i += WAITERS

    async def poll() -> None:
        await seen.wait()
        async with Client.connect(daemon.socket) as c:
            while True:
                run_id = rng.choice(acks.submitted)
                try:
                    got = await c.get(run_id)
                except RemoteError as exc:
                    acks.errors.append(exc.code)
                    return
                for step in got["steps"]:
                    if step["status"] == "completed":
                        acks.steps[(run_id, step["step_id"])] = step["output"]
                await asyncio.sleep(0)

    submitting = asyncio.ensure_future(submit())
    tasks = [submitting, *(asyncio.ensure_future(wait(k)) for k in range(WAITERS))]
    polling = asyncio.ensure_future(poll())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        # Done when every run was waited for, or every client lost the daemon, or stopped.
        everything = asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait([everything, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (*tasks, polling, stopper):
            t.cancel()
        for t in (*tasks, polling):
            with contextlib.suppress(asyncio.CancelledError, *_CLIENT_GONE):
                await t


async def check_after_restart(daemon: DaemonProcess, acks: Acks) -> Counter[tuple[str, str]]:
    """The restarted daemon must hold every acknowledged thing and finish every run exactly as
    it would have without the cut. AssertionError names the first violation."""
    async with Client.connect(daemon.socket) as c:
        for run_id in acks.submitted:
            try:
                final = await c.wait(run_id, timeout=30)
            except RemoteError as exc:
                raise AssertionError(f"acknowledged run {run_id} lost: {exc}") from exc
            assert final["status"] == "completed", f"run {run_id} ended {final['status']}: {final}"
            assert final["output"] == expected_output(run_id), f"run {run_id} output differs"
            got = await c.get(run_id)
            outputs = {s["step_id"]: s["output"] for s in got["steps"]}
            for step_id in (f"s{i}" for i in range(STEPS)):
                if (run_id, step_id) in acks.steps:
                    assert outputs.get(step_id) == acks.steps[(run_id, step_id)], (
                        f"acknowledged step result {run_id}/{step_id} lost")
        for run_id, output in acks.completed.items():
            assert output == expected_output(run_id), f"completed run {run_id} acked wrong output"
    ledger = ledger_lines(daemon.workdir / "ledger.txt")
    runs = Counter((run, step) for run, step, _ in ledger)
    rerun = {(run, step) for run, step, inc in ledger if inc > 1}
    for run_id in acks.completed:
        assert not {s for r, s in rerun if r == run_id}, f"completed run {run_id} ran again (lost)"
    lost_steps = sorted(k for k in acks.steps if k in rerun)
    assert not lost_steps, f"acknowledged step results lost, steps ran again: {lost_steps[:5]}"
    # At full, a run's next step starts only after the last one is durable: at most the step
    # in flight at the cut runs a second time.
    assert max(runs.values(), default=0) <= 2, f"a step ran {max(runs.values())} times"
    return runs


def ledger_lines(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    return [(r, s, int(i)) for r, s, i in (line.split() for line in path.read_text().splitlines())]


def integrity_check(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    assert result == [("ok",)], f"integrity_check: {result[:5]}"


async def tear_restart_and_check(
    daemon: DaemonProcess, acks: Acks, rng: random.Random
) -> TearStats:
    """After the kill: tear what the shim saw unsynced, restart, check every acknowledgement
    and the database's integrity; the daemon must then stop cleanly."""
    torn = power_cut(daemon.db, daemon.workdir / "shim.log", rng)
    daemon.start()
    try:
        await check_after_restart(daemon, acks)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    integrity_check(daemon.db)
    return torn
