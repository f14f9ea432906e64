"""Single owner (issue 10 item 5, the part tests/e2e/test_daemon.py does not cover): many
attempts to start a second daemon on a live daemon's database, with the same or another socket,
are all refused (exit 1) and leave the first daemon undisturbed; a stale socket left by a
killed daemon is replaced on every restart."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest

from orchestrator.client import Client
from tests.reliability.conftest import RelDaemon

pytestmark = pytest.mark.slow

ATTEMPTS = 20


async def test_twenty_second_daemons_are_all_refused(
    make_rel_daemon: Callable[..., RelDaemon],
) -> None:
    first = make_rel_daemon(name="first")
    inode = os.stat(first.socket).st_ino
    rivals = [
        make_rel_daemon(start=False, name=f"rival{i}", storage={"path": str(first.db_path)},
                        daemon={"socket": str(first.socket)} if i % 2 else {})
        for i in range(ATTEMPTS)
    ]
    codes: list[int] = []
    for batch in range(0, ATTEMPTS, 10):  # ten at a time: racing each other too
        procs = [r.spawn() for r in rivals[batch:batch + 10]]
        for proc in procs:
            try:
                codes.append(proc.wait(20))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(-999)
    assert codes == [1] * ATTEMPTS
    for rival in rivals:
        assert '"daemon.refused"' in rival.new_log()
        assert rival.proc is None
    assert first.alive()
    assert os.stat(first.socket).st_ino == inode  # nobody replaced the live socket
    async with Client.connect(first.socket) as c:
        run = await c.submit("rel-echo", {"still": "mine"})
        assert (await c.wait(run["run_id"], timeout=10))["status"] == "completed"


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
