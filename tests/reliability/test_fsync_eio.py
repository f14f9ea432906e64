"""Injected fsync EIO (SPEC §4, §10): the LD_PRELOAD shim makes one fsync/fdatasync of the WAL
or the database fail with EIO, after ``daemon.ready``. The error must end as a client error (a
StorageError-type reply) or a clean fail-stop (``daemon.fail_stop`` logged, exit non-zero); a
daemon still up must refuse the next write, or it would go on acknowledging work while the
kernel may have dropped pages. Then a power cut that also drops every write the failed fsync
covered (Linux forgets them), a restart without the shim: nothing acknowledged may be lost.

Seeded round kinds: a commit's WAL fsync (the nth of 100) during a 60-run workload, or the
database fsync of the writer's idle checkpoint after a small one."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

import pytest

from orchestrator.client import Client, RemoteError
from tests.crash import campaign
from tests.crash.daemon_process import DaemonProcess
from tests.reliability.powercut.apply import read_log
from tests.reliability.powercut.harness import (
    Acks,
    pc_daemon,
    run_input,
    shim_env,
    tear_restart_and_check,
    workload,
)

pytestmark = pytest.mark.slow

COMMIT_RUNS = 60  # about 200 commit fsyncs after ready
COMMIT_SYNCS = 100
CHECKPOINT_RUNS = 8  # keeps the WAL under SQLite's 1000-page auto-checkpoint
AUTOCHECKPOINT_RUNS = 150  # takes the WAL past it while busy
# The wire has no storage-error code (SPEC §6): a StorageError other than STORAGE_FULL reaches
# the client as INTERNAL, and the daemon logs it as socket.internal_error.
STORAGE_ERRORS = frozenset({"INTERNAL", "STORAGE_ERROR", "STORAGE_CLOSED"})
FAIL_STOP_EXIT = 70  # orchestrator.daemon.EXIT_FAIL_STOP
IDLE_CHECKPOINT_WAIT = 2.5  # the writer checkpoints after 1 s without writes
MUTANT_ROUNDS = 20


def round_kind(rng: random.Random) -> tuple[str, int, int]:
    """(shim target, nth fsync of it, runs) for one seeded round."""
    if rng.random() < 0.2:
        return "db", 1, CHECKPOINT_RUNS
    return "commit", rng.randint(1, COMMIT_SYNCS), COMMIT_RUNS


async def eio_round(workdir: Path, so: Path, seed: int, env: dict[str, str] | None = None,
                    kind: tuple[str, int, int] | None = None) -> str:
    """One injected EIO; returns how it ended. AssertionError = violation."""
    rng = random.Random(seed)
    target, nth, runs = kind or round_kind(rng)
    started = time.monotonic()
    daemon = pc_daemon(workdir)
    armed = daemon.workdir / "armed"
    daemon.start(env=shim_env(daemon, so, WF_SHIM_FSYNC_EIO=str(nth),
                              WF_SHIM_FSYNC_EIO_FILE=target, WF_SHIM_ARM=str(armed),
                              **(env or {})))
    armed.touch()  # count fsyncs from here: start-up is not the point
    acks = Acks()
    await workload(daemon, runs, acks, random.Random(rng.random()), asyncio.Event())
    assert daemon.proc is not None
    # Give the EIO (an idle checkpoint's comes after 1 s without writes) time to happen and
    # the daemon time to stop on it.
    deadline = time.monotonic() + IDLE_CHECKPOINT_WAIT
    while daemon.proc.poll() is None and time.monotonic() < deadline:
        if injected_eio(daemon):
            deadline = min(deadline, time.monotonic() + 0.5)
        await asyncio.sleep(0.05)
    injected = injected_eio(daemon)
    assert injected, f"fsync #{nth} of the {target} never happened: the round proves nothing"
    code = daemon.proc.poll()
    if code is not None:
        events = [e.get("event") for e in daemon.events()]
        assert code == FAIL_STOP_EXIT and "daemon.fail_stop" in events, (
            f"daemon died after EIO on {target} fsync #{nth} with exit {code}, "
            f"not a clean fail-stop:\n{daemon.tail()}")
        outcome = "fail-stop"
    else:
        probe = await probe_write(daemon.socket, run_input(daemon.workdir / "ledger.txt"))
        daemon.kill9()
        client_errors = [c for c in acks.errors if c in STORAGE_ERRORS]
        assert probe in STORAGE_ERRORS and storage_error_logged(daemon), (
            f"EIO on {target} fsync #{nth}: no fail-stop, and a write after it got {probe} "
            f"(errors seen before: {acks.errors})\n{daemon.tail(5)}")
        outcome = f"client errors ({len(client_errors)} + probe), daemon refusing writes"
    torn = await tear_restart_and_check(daemon, acks, rng)
    return (f"EIO on {target} fsync #{nth} ({runs} runs): {outcome}; {acks.figures()}; "
            f"{torn.doomed} writes dropped, {torn.unsynced} unsynced; "
            f"{time.monotonic() - started:.1f}s")


def injected_eio(daemon: DaemonProcess) -> bool:
    return any(r.kind == "E" for r in read_log(daemon.workdir / "shim.log"))


def storage_error_logged(daemon: DaemonProcess) -> bool:
    """The probe's INTERNAL reply was a StorageError (not some other bug)."""
    internal = [e for e in daemon.events() if e.get("event") == "socket.internal_error"]
    return bool(internal) and "storage.errors.StorageError" in str(internal[-1].get("exception"))


async def probe_write(socket: Path, input: dict[str, object]) -> str:
    """Submit one more run; its error code, or "acknowledged"."""
    async with Client.connect(socket) as c:
        try:
            await c.submit("pc-chain", input, run_id="pc-probe")
        except RemoteError as exc:
            return exc.code
    return "acknowledged"


@pytest.mark.parametrize("seed", campaign.rounds(ci=2, campaign=100))
async def test_fsync_eio_is_a_client_error_or_fail_stop(tmp_path: Path, shim: Path,
                                                        seed: int) -> None:
    figures = await eio_round(tmp_path, shim, seed)
    sys.stderr.write(f"fsync-EIO round seed={seed}: {figures}\n")


@pytest.mark.parametrize("target", ["commit", "db"])
async def test_fsync_eio_check_catches_writing_on_after_an_io_error(
    tmp_path: Path, shim: Path, target: str
) -> None:
    """With the writer ignoring I/O errors (the engine before this check), a daemon that got
    an EIO on a commit or on its idle checkpoint acknowledges a later write."""
    for k, seed in enumerate(range(campaign.SEED, campaign.SEED + MUTANT_ROUNDS), start=1):
        workdir = tmp_path / str(k)
        workdir.mkdir()
        rng = random.Random(seed)
        # Commit EIOs while only submits are in flight are the ones no actor turns into a
        # fail-stop: inject early, when the batch is most likely submits only.
        kind = ("db", 1, CHECKPOINT_RUNS) if target == "db" else ("commit", rng.randint(1, 3),
                                                                   COMMIT_RUNS)
        try:
            await eio_round(workdir, shim, seed, {"WF_TEST_SKIP_IO_FAIL_STOP": "1"}, kind)
        except AssertionError as exc:
            sys.stderr.write(f"SKIP_IO_FAIL_STOP ({target}) detected at round {k} "
                             f"(seed {seed}): {str(exc).splitlines()[0]}\n")
            return
    pytest.fail(f"{MUTANT_ROUNDS} EIO rounds with I/O errors ignored and no violation reported")


# Regression: SQLite's automatic checkpoint (inside COMMIT) swallowed an fsync EIO and the daemon
# kept acknowledging; the writer now turns it off and checkpoints itself (storage.sqlite.writer).
async def test_fsync_eio_in_sqlite_auto_checkpoint_is_not_swallowed(tmp_path: Path,
                                                                    shim: Path) -> None:
    await eio_round(tmp_path, shim, campaign.SEED, kind=("db", 1, AUTOCHECKPOINT_RUNS))
