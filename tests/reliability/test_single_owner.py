"""Single owner (issue 10 item 5, the part tests/e2e/test_daemon.py does not cover): many
attempts to start a second daemon on a live daemon's database, alternately with the same and
another socket, are all refused (exit 1) and leave the first daemon undisturbed (20 attempts in
CI, 100 under ``WF_CAMPAIGN=1``); a stale socket left by a killed daemon is replaced on every
restart."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import pytest

from orchestrator.client import Client
from tests.crash.campaign import CAMPAIGN, rounds
from tests.reliability.conftest import RelDaemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900 if CAMPAIGN else 120)]

ATTEMPTS = len(rounds(ci=20, campaign=100))
RACING = 10  # rivals started at once: they race each other for the lock too
STARTED = "started"  # the outcome of a rival that reached daemon.ready


def outcomes(rivals: list[RelDaemon], procs: list[subprocess.Popen[bytes]],
             timeout: float = 20.0) -> list[int | str]:
    """Each rival's exit code, ``STARTED`` if it logged ``daemon.ready`` (then it is left
    running as ``rival.proc`` for the fixture to stop), or ``"hung"`` after ``timeout``."""
    out: dict[int, int | str] = {}
    deadline = time.monotonic() + timeout
    while len(out) < len(procs):
        for i, (rival, proc) in enumerate(zip(rivals, procs, strict=True)):
            if i in out:
                continue
            if proc.poll() is not None:
                out[i] = proc.returncode
            elif '"daemon.ready"' in rival.new_log():
                rival.proc = proc
                out[i] = STARTED
            elif time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                out[i] = "hung"
        time.sleep(0.02)
    return [out[i] for i in range(len(procs))]


async def test_second_daemons_are_all_refused(
    make_rel_daemon: Callable[..., RelDaemon],
) -> None:
    first = make_rel_daemon(name="first")
    inode = os.stat(first.socket).st_ino
    rivals = [  # even: another socket; odd: the first daemon's socket
        make_rel_daemon(start=False, name=f"rival{i}", storage={"path": str(first.db_path)},
                        daemon={"socket": str(first.socket)} if i % 2 else {})
        for i in range(ATTEMPTS)
    ]
    codes: list[int | str] = []
    for batch in range(0, ATTEMPTS, RACING):
        group = rivals[batch:batch + RACING]
        codes += outcomes(group, [r.spawn() for r in group])
    starts = codes.count(STARTED)
    print(f"single owner: {ATTEMPTS} attempts, {starts} starts, {codes.count(1)} refused")
    assert codes == [1] * ATTEMPTS, f"{starts} of {ATTEMPTS} second daemons started: {codes}"
    for rival in rivals:
        assert '"daemon.refused"' in rival.new_log()
    assert first.alive()
    assert os.stat(first.socket).st_ino == inode  # nobody replaced the live socket
    async with Client.connect(first.socket) as c:
        run = await c.submit("rel-echo", {"still": "mine"})
        assert (await c.wait(run["run_id"], timeout=10))["status"] == "completed"


def test_the_refusal_check_sees_a_start(make_rel_daemon: Callable[..., RelDaemon]) -> None:
    """The control: a rival on its own database is not refused, and ``outcomes`` says so (a
    check that could not see a start would prove nothing)."""
    make_rel_daemon(name="first")
    control = make_rel_daemon(start=False, name="control")
    assert outcomes([control], [control.spawn()]) == [STARTED]


async def test_stale_socket_is_replaced_after_each_kill(
    make_rel_daemon: Callable[..., RelDaemon],
) -> None:
    d = make_rel_daemon()
    run_ids = []
    for round_ in range(3):
        async with Client.connect(d.socket) as c:
            run = await c.submit("rel-signal", {}, run_id=f"sig-{round_}")
            run_ids.append(run["run_id"])
        d.kill()
        assert d.socket.exists()
        d.start()
        assert '"socket.stale_removed"' in d.new_log()
    async with Client.connect(d.socket) as c:
        for run_id in run_ids:
            await c.signal(run_id, "go", run_id)
            done = await c.wait(run_id, timeout=10)
            assert done["output"] == {"payload": run_id}
