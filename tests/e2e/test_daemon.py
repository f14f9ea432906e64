"""The daemon process: start-up refusals, the socket file, restarts, the event loop, the log."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable

import pytest

from orchestrator.client import Client
from tests.e2e.conftest import Daemon, wait_status

pytestmark = pytest.mark.slow


def _exit_code(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the refused daemon kept running")


def test_socket_file_is_mode_0600(daemon: Daemon) -> None:
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_database_and_lock_files_are_mode_0600(daemon: Daemon) -> None:
    for path in (daemon.db_path, daemon.db_path.with_name("wf.db.lock")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_second_daemon_on_the_same_database_refuses_naming_the_pid(
    make_daemon: Callable[..., Daemon],
) -> None:
    first = make_daemon()
    assert first.proc is not None
    second = make_daemon(start=False, storage={"path": str(first.db_path)})
    assert second.socket != first.socket
    assert _exit_code(second.spawn()) == 1
    log = second.new_log()
    assert '"daemon.refused"' in log
    assert f"pid {first.proc.pid}" in log
    assert not second.socket.exists()


async def test_second_daemon_on_the_same_live_socket_refuses(
    make_daemon: Callable[..., Daemon],
) -> None:
    first = make_daemon()
    second = make_daemon(start=False, daemon={"socket": str(first.socket)})
    assert second.db_path != first.db_path
    assert _exit_code(second.spawn()) == 1
    log = second.new_log()
    assert '"daemon.refused"' in log
    assert str(first.socket) in log
    async with first.client() as c:  # the first daemon still owns its socket
        run = await c.submit("e2e-echo", {})
        assert (await c.wait(run["run_id"], timeout=10))["status"] == "completed"


async def test_stale_socket_of_a_killed_daemon_is_replaced_on_restart(daemon: Daemon) -> None:
    async with daemon.client() as c:
        run = await c.submit("e2e-signal", {})
        await wait_status(c, run["run_id"], "waiting")
    daemon.kill()
    assert daemon.socket.exists()  # left behind by SIGKILL
    daemon.start()
    assert '"socket.stale_removed"' in daemon.new_log()
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    async with daemon.client() as c:
        assert (await c.get(run["run_id"]))["status"] == "waiting"
        await c.signal(run["run_id"], "go", "after kill")
        done = await c.wait(run["run_id"], timeout=10)
    assert done["output"] == {"payload": "after kill"}


async def test_runs_survive_a_clean_restart(daemon: Daemon) -> None:
    async with daemon.client() as c:
        done = await c.submit("e2e-echo", {"x": 1})
        await c.wait(done["run_id"], timeout=10)
        waiting = await c.submit("e2e-token", {})
        token = (await wait_status(c, waiting["run_id"], "waiting"))["metadata"]["token"]
    daemon.restart()
    async with daemon.client() as c:
        assert (await c.get(done["run_id"]))["output"] == {"echo": {"x": 1}}
        await c.complete_token(token, "later")
        assert (await c.wait(waiting["run_id"], timeout=10))["output"] == {"payload": "later"}


def test_unknown_config_key_exits_2_naming_it(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False, daemon={"no_such_key": 1})
    proc = d.spawn()
    assert _exit_code(proc) == 2
    assert "daemon.no_such_key" in d.stderr_of_last_start()
    assert not d.socket.exists()


def test_wrong_config_type_exits_2_naming_the_key(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False, daemon={"max_active_runs": "many"})
    assert _exit_code(d.spawn()) == 2
    assert "daemon.max_active_runs" in d.stderr_of_last_start()


async def test_uvloop_daemon_runs_workflows(make_daemon: Callable[..., Daemon]) -> None:
    pytest.importorskip("uvloop")
    d = make_daemon(daemon={"event_loop": "uvloop"})
    ready = next(r for r in d.log_records() if r["event"] == "daemon.ready")
    assert ready["event_loop"] == "uvloop"
    async with d.client() as c:
        run = await c.submit("e2e-parent", {"child": "e2e-echo", "child_input": 1})
        done = await c.wait(run["run_id"], timeout=10)
        assert done["output"] == {"child_output": {"echo": 1}}
        sig = await c.submit("e2e-signal", {})
        await wait_status(c, sig["run_id"], "waiting")
        await c.signal(sig["run_id"], "go", 2)
        assert (await c.wait(sig["run_id"], timeout=10))["status"] == "completed"


async def test_log_records_are_json_lines_with_the_stable_keys(
    daemon: Daemon, client: Client
) -> None:
    run = await client.submit("e2e-steps", {})
    await client.wait(run["run_id"], timeout=10)
    records = [r for r in daemon.log_records() if r.get("run_id") == run["run_id"]]
    events = [r["event"] for r in records]
    assert events[0] == "run.submitted"
    assert events[-1] == "run.completed"
    assert "run.started" in events
    assert events.count("step.completed") == 2
    for r in records:
        assert r["timestamp"].endswith("Z")
        assert r["level"] in ("debug", "info", "warning", "error")
        assert r["workflow_id"] == "e2e-steps"
    step = next(r for r in records if r["event"] == "step.completed")
    assert {"step_id", "attempt", "duration_ms"} <= step.keys()
