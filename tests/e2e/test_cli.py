"""The ``wf`` CLI as a subprocess against a real daemon (SPEC §6)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.client import Client
from tests.e2e.conftest import Daemon, wait_status

pytestmark = pytest.mark.slow

ISO_UTC = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")
EPOCH = re.compile(r"\b1\d{9}\.\d+\b")


async def wf(
    daemon: Daemon, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(daemon.cli, *args, input=input)


async def wf_json(daemon: Daemon, *args: str) -> Any:
    proc = await wf(daemon, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


# --- submit / wait --------------------------------------------------------------------------


async def test_submit_prints_the_run_human_and_json(daemon: Daemon, client: Client) -> None:
    human = await wf(daemon, "submit", "e2e-echo", "--input", '{"a": 1}', "--tag", "t1")
    assert human.returncode == 0, human.stderr
    run_id = re.search(r"run_id:\s+(\S+)", human.stdout).group(1)  # type: ignore[union-attr]
    assert re.search(r"workflow_id:\s+e2e-echo", human.stdout)
    assert re.search(r"tags:\s+\[\"t1\"\]", human.stdout)
    assert ISO_UTC.search(human.stdout)
    assert not EPOCH.search(human.stdout)
    assert (await client.wait(run_id, timeout=10))["status"] == "completed"

    record = await wf_json(daemon, "submit", "e2e-echo", "--input", "[1, 2]")
    assert record["workflow_id"] == "e2e-echo"
    assert record["input"] == [1, 2]
    assert isinstance(record["created_at"], float)  # JSON keeps epoch seconds


async def test_submit_input_from_stdin(daemon: Daemon) -> None:
    proc = await wf(daemon, "--json", "submit", "e2e-echo", "--wait", "--input", "@-",
                    input='{"from": "stdin"}')
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["output"] == {"echo": {"from": "stdin"}}


async def test_submit_wait_exits_0_for_completed_and_1_for_failed(daemon: Daemon) -> None:
    ok = await wf(daemon, "--json", "submit", "e2e-echo", "--input", "{}", "--wait")
    assert ok.returncode == 0, ok.stderr
    assert orjson.loads(ok.stdout)["status"] == "completed"
    bad = await wf(daemon, "submit", "e2e-fail", "--wait")
    assert bad.returncode == 1
    assert re.search(r"status:\s+failed", bad.stdout)
    assert "E2E_BOOM: it broke" in bad.stdout


async def test_submit_idempotency_key_and_delay(daemon: Daemon, client: Client) -> None:
    first = await wf_json(daemon, "submit", "e2e-echo", "--idempotency-key", "k", "--delay", "1s")
    second = await wf_json(daemon, "submit", "e2e-echo", "--idempotency-key", "k")
    assert first["run_id"] == second["run_id"]
    assert first["status"] == "pending"
    assert (await client.wait(first["run_id"], timeout=10))["status"] == "completed"


async def test_wait_command_exit_codes(daemon: Daemon, client: Client) -> None:
    ok = await client.submit("e2e-echo", {})
    bad = await client.submit("e2e-fail", {})
    waiting = await client.submit("e2e-signal", {})
    assert (await wf(daemon, "wait", ok["run_id"])).returncode == 0
    assert (await wf(daemon, "wait", bad["run_id"])).returncode == 1
    await wait_status(client, waiting["run_id"], "waiting")
    timed = await wf(daemon, "--json", "wait", waiting["run_id"], "--timeout", "100ms")
    assert timed.returncode == 1
    assert orjson.loads(timed.stdout)["status"] == "waiting"
    await client.cancel(waiting["run_id"])


# --- runs / show ----------------------------------------------------------------------------


async def test_runs_table_and_json(daemon: Daemon, client: Client) -> None:
    a = await client.submit("e2e-echo", {}, tags=["x"])
    b = await client.submit("e2e-fail", {})
    await client.wait(a["run_id"], timeout=10)
    await client.wait(b["run_id"], timeout=10)
    table = await wf(daemon, "runs")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["RUN_ID", "WORKFLOW", "STATUS", "CREATED", "DURATION", "TAGS"]
    assert any(a["run_id"] in line and "completed" in line and " x" in line for line in lines)
    assert any(b["run_id"] in line and "failed" in line for line in lines)
    assert ISO_UTC.search(table.stdout)
    assert not EPOCH.search(table.stdout)

    listed = await wf_json(daemon, "runs", "--status", "failed")
    assert [r["run_id"] for r in listed["runs"]] == [b["run_id"]]
    listed = await wf_json(daemon, "runs", "--workflow", "e2e-echo", "--tag", "x", "--limit", "5")
    assert [r["run_id"] for r in listed["runs"]] == [a["run_id"]]


async def test_show_prints_steps_waitpoints_metadata_and_error(
    daemon: Daemon, client: Client
) -> None:
    run = await client.submit("e2e-steps", {})
    await client.wait(run["run_id"], timeout=10)
    shown = await wf(daemon, "show", run["run_id"])
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert re.search(r"^\s+first\s+completed\s+1\s+\S+Z\s+\d+ms", out, re.M), out
    assert re.search(r"^\s+second\s+completed", out, re.M)
    assert "stage: done" in out
    assert "count: 2" in out
    assert not EPOCH.search(out)

    as_json = await wf_json(daemon, "show", run["run_id"])
    assert as_json == await client.get(run["run_id"])

    waiting = await client.submit("e2e-signal", {})
    await wait_status(client, waiting["run_id"], "waiting")
    shown = await wf(daemon, "show", waiting["run_id"])
    assert re.search(r"^\s+signal:go:0\s+signal\s+waiting", shown.stdout, re.M | re.I), (
        shown.stdout
    )
    await client.cancel(waiting["run_id"])

    failed = await client.submit("e2e-fail", {})
    await client.wait(failed["run_id"], timeout=10)
    shown = await wf(daemon, "show", failed["run_id"])
    assert re.search(r"^error:\s+E2E_BOOM: it broke", shown.stdout, re.M), shown.stdout
    assert re.search(r"^\s+boom\s+failed\s+1\s+.*E2E_BOOM", shown.stdout, re.M)


async def test_show_unknown_run_exits_1_with_the_code(daemon: Daemon) -> None:
    proc = await wf(daemon, "show", "nope")
    assert proc.returncode == 1
    assert "NOT_FOUND" in proc.stderr
    assert "nope" in proc.stderr


# --- cancel / event / signal / token --------------------------------------------------------


async def test_cancel_command(daemon: Daemon, client: Client) -> None:
    run = await client.submit("e2e-reserve-wait", {})
    await wait_status(client, run["run_id"], "waiting")
    proc = await wf(daemon, "cancel", run["run_id"], "--no-compensate", "--reason", "test")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"status:\s+cancelled", proc.stdout)
    assert (await client.get(run["run_id"]))["compensations"] == []
    again = await wf(daemon, "cancel", run["run_id"])
    assert again.returncode == 1
    assert "RUN_NOT_ACTIVE" in again.stderr


async def test_event_send_command(daemon: Daemon, client: Client) -> None:
    run = await client.submit("e2e-event", {"type": "cli.evt", "match": {"k": 1}})
    await wait_status(client, run["run_id"], "waiting")
    proc = await wf(daemon, "event", "send", "cli.evt", "--payload", '{"k": 1}', "--id", "e1")
    assert proc.returncode == 0, proc.stderr
    assert "resolved: 1" in proc.stdout
    assert "event_id: e1" in proc.stdout
    assert (await client.wait(run["run_id"], timeout=10))["output"] == {"payload": {"k": 1}}
    again = await wf_json(daemon, "event", "send", "cli.evt", "--payload", "{}", "--id", "e1")
    assert again == {"event_id": "e1", "resolved": 0, "started": [], "cancelled": 0}


async def test_signal_command(daemon: Daemon, client: Client) -> None:
    run = await client.submit("e2e-signal", {})
    await wait_status(client, run["run_id"], "waiting")
    proc = await wf(daemon, "--json", "signal", run["run_id"], "go", "--payload", '"hi"')
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout) == {"delivered": True}
    assert (await client.wait(run["run_id"], timeout=10))["output"] == {"payload": "hi"}
    done = await wf(daemon, "signal", run["run_id"], "go", "--payload", "1")
    assert done.returncode == 1
    assert "RUN_NOT_ACTIVE" in done.stderr


async def test_token_complete_command(daemon: Daemon, client: Client) -> None:
    run = await client.submit("e2e-token", {})
    token = (await wait_status(client, run["run_id"], "waiting"))["metadata"]["token"]
    proc = await wf(daemon, "token", "complete", token, "--payload", '{"ok": 1}')
    assert proc.returncode == 0, proc.stderr
    assert f"run_id: {run['run_id']}" in proc.stdout
    assert (await client.wait(run["run_id"], timeout=10))["output"] == {"payload": {"ok": 1}}
    again = await wf(daemon, "token", "complete", token, "--payload", "{}")
    assert again.returncode == 1
    assert "TOKEN_CONFLICT" in again.stderr


# --- tail / workflows / stats ---------------------------------------------------------------


async def test_tail_command_prints_live_records(daemon: Daemon, client: Client) -> None:
    proc = daemon.cli_popen("tail", "--workflow", "e2e-echo")
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The tail is live once it shows a run submitted after it started; keep submitting
        # until then (its subscription may land after the first few).
        deadline = time.monotonic() + 15
        while not any("run.completed" in line for line in lines):
            assert time.monotonic() < deadline, f"no tail output; stderr: {proc.stderr}"
            run = await client.submit("e2e-echo", {})
            await client.wait(run["run_id"], timeout=10)
            await asyncio.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
        reader.join(5)
    line = next(line for line in lines if "run.completed" in line)
    assert re.match(r"\S+Z info\s+run\.completed .*workflow_id=e2e-echo", line), line
    assert all("e2e-echo" in line for line in lines if "run_id=" in line)


async def test_workflows_command(daemon: Daemon) -> None:
    proc = await wf(daemon, "workflows")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("ID")
    assert re.search(r"^e2e-echo\s+\S+\s+One step that echoes the input\.", proc.stdout, re.M)
    listed = await wf_json(daemon, "workflows")
    assert "e2e-signal" in {w["id"] for w in listed["workflows"]}


async def test_stats_command(daemon: Daemon, client: Client) -> None:
    run = await client.submit("e2e-echo", {})
    await client.wait(run["run_id"], timeout=10)
    proc = await wf(daemon, "stats")
    assert proc.returncode == 0, proc.stderr
    assert "runs.completed: 1" in proc.stdout
    assert (await wf_json(daemon, "stats"))["runs"] == {"completed": 1}


# --- usage and reachability -----------------------------------------------------------------


async def test_bad_input_json_is_a_usage_error_naming_the_flag(daemon: Daemon) -> None:
    proc = await wf(daemon, "submit", "e2e-echo", "--input", "{nope")
    assert proc.returncode == 2
    assert "--input" in proc.stderr
    bad_payload = await wf(daemon, "event", "send", "t", "--payload", "[")
    assert bad_payload.returncode == 2
    assert "--payload" in bad_payload.stderr


async def test_unknown_command_is_a_usage_error(daemon: Daemon) -> None:
    proc = await wf(daemon, "frobnicate")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_stopped_daemon_is_unreachable_exit_3_naming_the_socket(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon()
    d.stop_cleanly()
    proc = d.cli("stats")
    assert proc.returncode == 3
    assert str(d.socket) in proc.stderr
    assert "wf daemon" in proc.stderr


def test_socket_from_wf_socket_env(daemon: Daemon, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--json", "stats"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={"WF_SOCKET": str(daemon.socket), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "runs" in orjson.loads(proc.stdout)


async def test_stream_watch_replay_and_schedules_commands(daemon: Daemon, client: Client) -> None:
    run = await client.submit("e2e-stream", {})
    await client.wait(run["run_id"], timeout=10)
    text = await wf(daemon, "stream", run["run_id"], "out")
    assert text.returncode == 0, text.stderr
    assert text.stdout == "hello stream world\n"
    chunks = [orjson.loads(line) for line in (await wf(
        daemon, "--json", "stream", run["run_id"], "out"
    )).stdout.splitlines()]
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3]

    watched = await wf(daemon, "--json", "watch", run["run_id"])  # terminal: ends at once
    assert watched.returncode == 0, watched.stderr
    assert orjson.loads(watched.stdout.splitlines()[-1])["status"] == "completed"

    replayed = await wf_json(daemon, "replay", run["run_id"])
    assert replayed["diverged"] is False

    schedules = await wf(daemon, "schedules")
    assert schedules.returncode == 0, schedules.stderr
    assert schedules.stdout.strip() == "no schedules"


async def test_show_lists_the_compensations_that_ran(daemon: Daemon, client: Client) -> None:
    run = await client.submit("e2e-reserve-wait", {})
    await wait_status(client, run["run_id"], "waiting")
    await client.cancel(run["run_id"])
    shown = await wf(daemon, "show", run["run_id"])
    assert "compensations (in the order they ran):" in shown.stdout, shown.stdout
    assert re.search(r"^\s+reserve\s+completed\s+\S+Z", shown.stdout, re.M), shown.stdout
