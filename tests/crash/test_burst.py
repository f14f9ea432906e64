"""Many concurrent runs, a kill -9 at a random moment, a restart: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.client import Client, DaemonUnreachable, RemoteError
from tests.crash import campaign
from tests.crash.daemon_process import DaemonProcess
from tests.crash.test_restart import HERE, ledger_lines

pytestmark = pytest.mark.slow

RUNS = 200
STEPS = 5


@pytest.mark.parametrize("seed", campaign.rounds(ci=3, campaign=100))
async def test_acknowledged_runs_survive_a_kill_during_a_burst(tmp_path: Path, seed: int) -> None:
    daemon = DaemonProcess(tmp_path, modules=["tests.crash.crash_workflows"],
                           paths=[HERE.parents[1]])
    await burst_scenario(daemon, tmp_path, seed)


async def burst_scenario(
    daemon: DaemonProcess, tmp_path: Path, seed: int, first_env: dict[str, str] | None = None
) -> None:
    """Submit a burst, kill -9 at a seeded moment, restart, check. AssertionError = violation.

    ``first_env`` goes to the first daemon only (a crash point that kills it sooner)."""
    rng = random.Random(seed)
    daemon.start(first_env)
    ledger = tmp_path / "ledger.txt"
    acked: list[str] = []

    async def submit_all(c: Client) -> None:
        for i in range(RUNS):
            run = await c.submit("crash-burst", {"ledger": str(ledger), "steps": STEPS},
                                 run_id=f"burst-{i}")
            acked.append(run["run_id"])

    try:
        async with Client.connect(daemon.socket) as c:
            submitting = asyncio.ensure_future(submit_all(c))
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            daemon.kill9()
            with contextlib.suppress(DaemonUnreachable, ConnectionError, OSError):
                await submitting
        assert acked, "the kill came before any submission was acknowledged"
        daemon.start()
        async with Client.connect(daemon.socket) as c:
            for run_id in acked:
                try:
                    final = await c.wait(run_id, timeout=20)
                except RemoteError as exc:
                    raise AssertionError(f"acknowledged run {run_id} is gone: {exc}") from exc
                assert final["status"] == "completed", final
                assert final["output"] == STEPS * 2
    finally:
        assert daemon.stop() == 0, daemon.tail()

    counts = Counter((run, step) for run, step, _, _ in ledger_lines(ledger))
    # At most one step per run was in flight at the kill, and it may have run twice.
    twice = Counter(run for (run, _), n in counts.items() if n == 2)
    assert all(n == 1 for n in twice.values()), twice
    assert max(counts.values()) <= 2
    for run_id in acked:
        assert {step for (run, step) in counts if run == run_id} == {f"s{i}" for i in range(STEPS)}
