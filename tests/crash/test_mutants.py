"""The crash checks must be able to fail: with each mutant switched on, they report a violation.

A mutant is a deliberate bug behind a test-only switch (tests.harness.launch.MUTANTS). If a check
still passed with its mutant on, it would prove nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from orchestrator.client import DaemonUnreachable
from tests.crash.daemon_process import DaemonProcess
from tests.crash.test_burst import burst_scenario
from tests.crash.test_restart import HERE, kill_and_restart_scenario

pytestmark = pytest.mark.slow


def mutated(tmp_path: Path, name: str) -> DaemonProcess:
    return DaemonProcess(tmp_path, modules=["tests.crash.crash_workflows"],
                         paths=[HERE.parents[1]], env={f"WF_TEST_{name}": "1"})


@pytest.mark.parametrize(
    ("name", "violation"),
    [
        # Completed steps ran again (the ledger has repeats), or, where the journal still
        # holds later entries, divergence detection held the replay before it ran them
        # (SPEC §3): its run, and a parent waiting on it, never complete.
        ("SKIP_STEP_DEDUP", ("== {}", "'waiting'", "'paused'")),
        ("SKIP_TIMER_ARM_ON_START", ("'waiting'",)),  # timers due while down never fired
    ],
)
async def test_kill_restart_checks_catch_the_mutant(
    tmp_path: Path, name: str, violation: tuple[str, ...]
) -> None:
    daemon = mutated(tmp_path, name)
    daemon.start()
    try:
        with pytest.raises(AssertionError) as caught:
            await kill_and_restart_scenario(daemon, tmp_path)
        assert any(v in str(caught.value) for v in violation), str(caught.value)
    finally:
        daemon.stop()


async def test_burst_check_catches_acknowledging_before_commit(tmp_path: Path) -> None:
    """With replies sent before the commit, some acknowledged run is gone after a kill -9.

    A kill at a wall-clock moment hits the window between reply and commit only sometimes (it
    missed 5 rounds in a row on a CI machine with a fast disk), so the daemon kills itself
    right after sending its k-th reply: the mutant sent it before the run's commit was even
    enqueued, so the check must report that run gone. (Without the mutant the same crash
    point loses nothing: tests/crash/test_crash_points.py.)"""
    caught = 0
    for seed in range(1, 6):
        workdir = tmp_path / str(seed)
        workdir.mkdir()
        crash = {"WF_CRASH_AT": f"reply.sent:{3 * seed}"}
        with contextlib.suppress(DaemonUnreachable):
            try:
                await burst_scenario(mutated(workdir, "ACK_BEFORE_COMMIT"), workdir, seed,
                                     first_env=crash)
            except AssertionError as exc:
                assert "is gone" in str(exc)  # an acknowledged submission was lost
                caught += 1
                break
    assert caught, "5 rounds with acks sent before commit and no violation reported"
