"""The `wf` CLI against the real engine behind an in-process socket server.

`cli.run` owns its event loop (`asyncio.run`), so tests call it in a worker thread while the server
and the engine keep running on the test's loop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from orchestrator import logs
from orchestrator.client import cli, tables
from orchestrator.daemon.server import SocketServer
from orchestrator.engine.engine import Engine
from tests.orchestrator.conftest import reach, until

WF = Path(sys.executable).parent / "wf"

# The engine logs in this process: into the feed's buffer, not onto the CLI's stdout.
pytestmark = pytest.mark.usefixtures("log_feed")


async def wf(capsys: pytest.CaptureFixture[str], server: SocketServer, *argv: str):
    code = await asyncio.to_thread(cli.run, ["--socket", str(server.path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_submit_human_and_json(server: SocketServer, capsys, engine: Engine) -> None:
    code, out, _ = await wf(
        capsys,
        server,
        "submit",
        "echo",
        "--input",
        '{"a": 1}',
        "--tag",
        "t1",
        "--tag",
        "t2",
        "--delay",
        "5m",
        "--priority",
        "2",
        "--run-id",
        "R",
    )
    assert code == 0
    assert "run_id:" in out and "R" in out and "pending" in out
    stored = await engine.get("R")
    assert stored["input"] == {"a": 1}
    assert stored["tags"] == ["t1", "t2"]
    assert stored["priority"] == 2
    assert stored["scheduled_at"] == pytest.approx(stored["created_at"] + 300.0)
    code, out, _ = await wf(capsys, server, "--json", "submit", "echo", "--input", "[1]")
    assert code == 0
    record = orjson.loads(out)
    assert record["input"] == [1] and record["workflow_id"] == "echo"
    assert (await engine.wait(record["run_id"]))["output"] == {"echo": [1]}


async def test_input_from_file(server: SocketServer, capsys, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"from": "file"}')
    code, out, _ = await wf(
        capsys, server, "submit", "echo", "--input", f"@{tmp_path}/in.json", "--json"
    )
    assert code == 0
    assert orjson.loads(out)["input"] == {"from": "file"}


async def test_submit_wait_exit_code_follows_the_run(server: SocketServer, capsys) -> None:
    code, out, _ = await wf(capsys, server, "submit", "echo", "--wait", "--json")
    assert code == 0 and orjson.loads(out)["status"] == "completed"
    assert orjson.loads(out)["output"] == {"echo": {}}  # --input defaults to {}
    code, out, _ = await wf(capsys, server, "submit", "fail", "--wait", "--json")
    assert code == 1 and orjson.loads(out)["error"]["code"] == "FATAL"


async def test_wait_command_exit_codes(server: SocketServer, capsys, engine: Engine) -> None:
    await engine.submit("fail", None, run_id="F")
    await engine.submit("signal", None, run_id="S")
    await reach(engine, "S", "waiting")
    code, out, _ = await wf(capsys, server, "wait", "F")
    assert code == 1
    assert "failed" in out and "FATAL: it broke" in out
    code, out, _ = await wf(capsys, server, "wait", "S", "--timeout", "10ms", "--json")
    assert code == 1 and orjson.loads(out)["status"] == "waiting"


async def test_daemon_error_prints_code_and_exits_1(server: SocketServer, capsys) -> None:
    code, out, err = await wf(capsys, server, "show", "missing")
    assert code == 1
    assert out == ""
    assert err.strip() == "error: NOT_FOUND: run 'missing' not found"
    code, _, err = await wf(capsys, server, "submit", "nope")
    assert code == 1 and "NOT_FOUND" in err and "nope" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "echo", "--input", "{bad"],
        ["signal", "R", "go", "--payload", "nope"],
        ["submit", "echo", "--delay", "soon"],
        ["retry", "R", "--mode", "again"],
        ["runs", "--limit", "ten"],
        ["event"],
        ["frobnicate"],
    ],
)
async def test_usage_errors_exit_2(server: SocketServer, capsys, argv: list[str]) -> None:
    code, _, err = await wf(capsys, server, *argv)
    assert code == 2
    assert err


async def test_bad_input_json_names_the_flag(server: SocketServer, capsys) -> None:
    code, _, err = await wf(capsys, server, "submit", "echo", "--input", "{bad")
    assert code == 2
    assert "--input" in err and "invalid JSON" in err


async def test_runs_show_and_run_commands(server: SocketServer, capsys, engine: Engine) -> None:
    await engine.submit("echo", {"x": 1}, run_id="A", tags=["blue"])
    await engine.wait("A")
    await engine.submit("reserve-wait", None, run_id="B")
    await reach(engine, "B", "waiting")
    code, out, _ = await wf(capsys, server, "runs")
    assert code == 0
    assert "RUN_ID" in out and "A" in out and "B" in out and "blue" in out
    code, out, _ = await wf(capsys, server, "runs", "--status", "waiting", "--json")
    assert [r["run_id"] for r in orjson.loads(out)["runs"]] == ["B"]

    code, out, _ = await wf(capsys, server, "show", "A")
    assert code == 0
    (step,) = (await engine.get("A"))["steps"]
    took = tables.duration(step["started_at"], step["finished_at"])
    for text in ("steps:", "fetch", took, "waitpoints:", "metadata:", "progress"):
        assert text in out
    code, out, _ = await wf(capsys, server, "show", "A", "--json")
    assert orjson.loads(out)["metadata"] == {"progress": 50}
    code, out, _ = await wf(capsys, server, "show", "B")
    assert code == 0 and "signal:go" in out and "waiting" in out

    code, out, _ = await wf(capsys, server, "pause", "B", "--json")
    assert code == 0 and orjson.loads(out)["status"] == "paused"  # parked: paused at once
    code, out, _ = await wf(capsys, server, "resume", "B", "--json")
    assert code == 0 and orjson.loads(out)["status"] == "waiting"
    code, _, err = await wf(capsys, server, "retry", "B", "--mode", "retrigger")
    assert code == 1 and "RUN_NOT_ACTIVE" in err  # it has not ended
    code, _, err = await wf(capsys, server, "resume", "B")
    assert code == 1 and "RUN_NOT_ACTIVE" in err  # not paused (nor a delayed run)
    code, out, _ = await wf(
        capsys, server, "cancel", "B", "--no-compensate", "--reason", "x", "--json"
    )
    assert code == 0 and orjson.loads(out)["status"] == "cancelled"
    cancelled = await engine.get("B")
    assert cancelled["error"]["message"] == "x"
    assert cancelled["compensations"] == []
    code, out, _ = await wf(capsys, server, "replay", "A", "--json")
    assert orjson.loads(out)["diverged"] is False
    code, _, err = await wf(capsys, server, "cancel", "A")
    assert code == 1 and "RUN_NOT_ACTIVE" in err


async def test_event_signal_token(server: SocketServer, capsys, engine: Engine) -> None:
    await engine.submit("event", {"type": "paid"}, run_id="E")
    await engine.submit("signal", None, run_id="S")
    await engine.submit("token", None, run_id="T")
    for run_id in ("E", "S", "T"):
        await reach(engine, run_id, "waiting")
    code, out, _ = await wf(
        capsys, server, "event", "send", "paid", "--payload", '{"n": 1}', "--id", "e1", "--json"
    )
    assert code == 0 and orjson.loads(out) == {
        "event_id": "e1", "resolved": 1, "started": [], "cancelled": 0}
    assert (await engine.wait("E"))["output"] == {"n": 1}
    code, out, _ = await wf(capsys, server, "event", "list")
    assert code == 0 and out.split("\n")[1].split()[1:4] == ["paid", "e1", "E"]
    code, out, _ = await wf(capsys, server, "event", "send", "paid", "--payload", "{}",
                            "--dry-run", "--json")
    assert code == 0 and orjson.loads(out)["would_resolve"] == []  # E is no longer waiting
    code, out, _ = await wf(capsys, server, "signal", "S", "finish", "--payload", "7")
    assert code == 0 and "delivered: yes" in out
    assert (await engine.wait("S"))["output"] == 7
    token = (await engine.get("T"))["metadata"]["token"]
    code, out, _ = await wf(
        capsys, server, "token", "complete", token, "--payload", "null", "--json"
    )
    assert code == 0 and orjson.loads(out) == {"run_id": "T"}
    code, _, err = await wf(capsys, server, "token", "complete", token, "--payload", "null")
    assert code == 1 and "TOKEN_CONFLICT" in err


async def test_listing_commands(server: SocketServer, capsys, engine: Engine) -> None:
    code, out, _ = await wf(capsys, server, "workflows")
    assert code == 0 and "ID" in out and "strict" in out
    await engine.schedule_create("nightly", "echo", cron="0 3 * * *")
    code, out, _ = await wf(capsys, server, "schedules", "--json")
    assert orjson.loads(out)["schedules"][0]["workflow_id"] == "echo"
    code, out, _ = await wf(capsys, server, "schedules")
    assert code == 0 and out.split()[:9] == [
        "NAME", "WORKFLOW", "RULE", "TIMEZONE", "NEXT_FIRE", "LAST_FIRE", "PAUSED", "SKIPPED",
        "MISSED"]
    await engine.wait((await engine.submit("echo", None))["run_id"])
    code, out, _ = await wf(capsys, server, "stats")
    assert code == 0 and "runs.completed: 1" in out


async def test_streaming_commands(server: SocketServer, capsys, engine: Engine) -> None:
    await engine.submit("stream", None, run_id="A")
    code, out, _ = await wf(capsys, server, "stream", "A", "s", "--follow")
    assert code == 0 and out == "hello\n"
    code, out, _ = await wf(capsys, server, "stream", "A", "s", "--json")
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [c["seq"] for c in lines] == [0, 1, 2]


async def tail(capsys, server: SocketServer, engine: Engine, *argv: str) -> tuple[int, str, str]:
    """Run ``wf tail`` while a run completes; once it printed ``run.completed`` the daemon goes
    away, which is how a tail ends (exit 3)."""
    subscribed = logs.subscriber_count()
    command = asyncio.create_task(
        asyncio.to_thread(cli.run, ["--socket", str(server.path), "tail", "--run", "T", *argv])
    )
    await until(lambda: logs.subscriber_count() > subscribed, "the tail to subscribe")
    await engine.submit("echo", None, run_id="T")
    await engine.wait("T")
    out: list[str] = []
    err: list[str] = []

    def printed_the_end() -> bool:
        captured = capsys.readouterr()
        out.append(captured.out)
        err.append(captured.err)
        return "run.completed" in "".join(out)

    await until(printed_the_end, "wf tail to print run.completed")
    await server.close()
    code = await command
    captured = capsys.readouterr()
    return code, "".join(out) + captured.out, "".join(err) + captured.err


async def test_tail_prints_records_at_or_above_the_level(
    server: SocketServer, capsys, engine: Engine
) -> None:
    code, out, err = await tail(capsys, server, engine, "--level", "info")
    assert "run.started" in out and "run.completed" in out
    assert "step.completed" not in out  # debug
    assert code == 3 and str(server.path) in err


async def test_tail_json_prints_one_record_per_line(
    server: SocketServer, capsys, engine: Engine
) -> None:
    code, out, _ = await tail(capsys, server, engine, "--json")
    records = [orjson.loads(line) for line in out.splitlines()]
    events = [r["event"] for r in records]
    assert events[:2] == ["run.submitted", "run.started"]
    assert "step.completed" in events and events[-1] == "run.completed"
    assert {r["run_id"] for r in records} == {"T"}
    assert code == 3


async def test_socket_from_env_and_config(
    server: SocketServer, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("WF_SOCKET", str(server.path))
    code = await asyncio.to_thread(cli.run, ["workflows"])
    assert code == 0
    monkeypatch.delenv("WF_SOCKET")
    conf_dir = server.path.parent / "conf"
    conf_dir.mkdir()
    rel = Path("..") / server.path.name  # relative to the config file's directory
    (conf_dir / "config.toml").write_text(f'[daemon]\nsocket = "{rel}"\n')
    code = await asyncio.to_thread(cli.run, ["--config", str(conf_dir / "config.toml"), "stats"])
    assert code == 0
    monkeypatch.chdir(conf_dir)  # ./config.toml is picked up by default
    code = await asyncio.to_thread(cli.run, ["stats", "--json"])
    assert code == 0
    (conf_dir / "config.toml").write_text("[daemon]\nsocket = 5\n")
    code = await asyncio.to_thread(cli.run, ["stats"])
    _, err = capsys.readouterr()
    assert code == 2 and "daemon.socket" in err


def test_unreachable_daemon_exits_3_naming_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    proc = subprocess.run(
        [str(WF), "--socket", str(path), "runs"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 3
    assert str(path) in proc.stderr
    assert "wf daemon" in proc.stderr


def test_main_exits_with_the_code(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--socket", str(tmp_path / "x.sock"), "stats"])
    assert info.value.code == 3
    with pytest.raises(SystemExit) as info:
        cli.main(["submit"])
    assert info.value.code == 2


async def test_runs_search(server: SocketServer, capsys, engine: Engine) -> None:
    await engine.submit("echo", {"customer": "Grace Hopper"}, run_id="S1")
    await engine.submit("echo", {"customer": "Alan Turing"}, run_id="S2")
    await engine.wait("S1")
    await engine.wait("S2")
    code, out, _ = await wf(capsys, server, "runs", "--search", "hopper", "--json")
    assert code == 0
    assert [r["run_id"] for r in orjson.loads(out)["runs"]] == ["S1"]
    code, _, err = await wf(capsys, server, "runs", "--search", "ho")
    assert code != 0 and "search" in err and "3 characters" in err


async def test_prune_dry_run_then_prune_spares_live_runs(
    server: SocketServer, capsys, engine: Engine
) -> None:
    await engine.submit("echo", {"x": 1}, run_id="P1")
    await engine.wait("P1")
    await engine.submit("reserve-wait", None, run_id="P2")
    await reach(engine, "P2", "waiting")
    code, out, _ = await wf(capsys, server, "prune", "--older-than", "0s", "--dry-run", "--json")
    assert code == 0
    assert orjson.loads(out) == {"runs": 1, "events": 0, "dry_run": True}
    assert (await engine.get("P1"))["status"] == "completed"
    code, out, _ = await wf(capsys, server, "prune", "--older-than", "0s", "--json")
    assert code == 0 and orjson.loads(out)["runs"] == 1
    code, _, err = await wf(capsys, server, "show", "P1")
    assert code != 0 and "P1" in err
    assert (await engine.get("P2"))["status"] == "waiting"
    # The configured policy (nothing set here: keep forever) prunes nothing.
    code, out, _ = await wf(capsys, server, "prune", "--json")
    assert orjson.loads(out) == {"runs": 0, "events": 0, "dry_run": False}
    code, _, err = await wf(capsys, server, "prune", "--status", "waiting")
    assert code == 2 and "--status" in err
