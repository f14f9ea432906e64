"""The `wf` CLI against a socket server on a fake service.

`cli.run` owns its event loop (`asyncio.run`), so tests call it in a worker thread while the server
keeps running on the test's loop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from orchestrator.client import cli
from orchestrator.daemon.server import SocketServer
from tests.orchestrator.fake_service import FakeService

WF = Path(sys.executable).parent / "wf"


async def wf(capsys: pytest.CaptureFixture[str], server: SocketServer, *argv: str):
    code = await asyncio.to_thread(cli.run, ["--socket", str(server.path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_submit_human_and_json(server: SocketServer, capsys, service: FakeService) -> None:
    code, out, _ = await wf(
        capsys,
        server,
        "submit",
        "ok",
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
    assert "run_id:" in out and "R" in out and "completed" in out
    assert service.calls[-1][1]["tags"] == ("t1", "t2")
    assert service.calls[-1][1]["delay"] == 300.0
    code, out, _ = await wf(capsys, server, "--json", "submit", "ok", "--input", "[1]")
    assert code == 0
    record = orjson.loads(out)
    assert record["input"] == [1] and record["status"] == "completed"


async def test_input_from_file(server: SocketServer, capsys, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"from": "file"}')
    code, out, _ = await wf(
        capsys, server, "submit", "ok", "--input", f"@{tmp_path}/in.json", "--json"
    )
    assert code == 0
    assert orjson.loads(out)["input"] == {"from": "file"}


async def test_submit_wait_exit_code_follows_the_run(server: SocketServer, capsys) -> None:
    code, out, _ = await wf(capsys, server, "submit", "ok", "--wait", "--json")
    assert code == 0 and orjson.loads(out)["status"] == "completed"
    code, out, _ = await wf(capsys, server, "submit", "fail", "--wait", "--json")
    assert code == 1 and orjson.loads(out)["error"]["code"] == "FATAL"


async def test_wait_command_exit_codes(server: SocketServer, capsys, service) -> None:
    await service.submit("fail", None, run_id="F")
    await service.submit("slow", None, run_id="S")
    code, out, _ = await wf(capsys, server, "wait", "F")
    assert code == 1
    assert "failed" in out and "FATAL: it broke" in out
    code, out, _ = await wf(capsys, server, "wait", "S", "--timeout", "10ms", "--json")
    assert code == 1 and orjson.loads(out)["status"] == "running"


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
        ["submit", "ok", "--input", "{bad"],
        ["signal", "R", "go", "--payload", "nope"],
        ["submit", "ok", "--delay", "soon"],
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
    code, _, err = await wf(capsys, server, "submit", "ok", "--input", "{bad")
    assert code == 2
    assert "--input" in err and "invalid JSON" in err


async def test_runs_show_and_run_commands(server: SocketServer, capsys, service) -> None:
    await service.submit("ok", {"x": 1}, run_id="A", tags=["blue"])
    await service.submit("slow", None, run_id="B")
    code, out, _ = await wf(capsys, server, "runs")
    assert code == 0
    assert "RUN_ID" in out and "A" in out and "B" in out and "blue" in out
    code, out, _ = await wf(capsys, server, "runs", "--status", "running", "--json")
    assert [r["run_id"] for r in orjson.loads(out)["runs"]] == ["B"]

    code, out, _ = await wf(capsys, server, "show", "A")
    assert code == 0
    for text in ("steps:", "fetch", "250ms", "waitpoints:", "sleep:0", "metadata:", "progress"):
        assert text in out
    code, out, _ = await wf(capsys, server, "show", "A", "--json")
    assert orjson.loads(out)["metadata"] == {"progress": 50}

    assert (await wf(capsys, server, "pause", "B"))[0] == 0
    assert (await wf(capsys, server, "resume", "B"))[0] == 0
    code, out, _ = await wf(
        capsys, server, "cancel", "B", "--no-compensate", "--reason", "x", "--json"
    )
    assert code == 0 and orjson.loads(out)["status"] == "cancelled"
    assert service.calls[-1][1] == {"run_id": "B", "compensate": False, "reason": "x"}
    code, out, _ = await wf(capsys, server, "retry", "B", "--mode", "retrigger", "--json")
    assert code == 0 and service.calls[-1][1]["mode"] == "retrigger"
    code, out, _ = await wf(capsys, server, "replay", "A", "--json")
    assert orjson.loads(out) == {"diverged": False, "detail": None}
    code, _, err = await wf(capsys, server, "resume", "A")
    assert code == 1 and "RUN_NOT_ACTIVE" in err


async def test_event_signal_token(server: SocketServer, capsys, service) -> None:
    await service.submit("slow", None, run_id="S")
    code, out, _ = await wf(
        capsys, server, "event", "send", "paid", "--payload", '{"n": 1}', "--id", "e1", "--json"
    )
    assert code == 0 and orjson.loads(out) == {"event_id": "e1", "resolved": 0}
    assert service.events["e1"] == {"type": "paid", "payload": {"n": 1}}
    code, out, _ = await wf(capsys, server, "signal", "S", "finish", "--payload", "7")
    assert code == 0 and "delivered: yes" in out
    code, out, _ = await wf(
        capsys, server, "token", "complete", "tok", "--payload", "null", "--json"
    )
    assert code == 0 and orjson.loads(out) == {"run_id": "run-1"}
    code, _, err = await wf(capsys, server, "token", "complete", "tok", "--payload", "null")
    assert code == 1 and "TOKEN_CONFLICT" in err


async def test_listing_commands(server: SocketServer, capsys) -> None:
    code, out, _ = await wf(capsys, server, "workflows")
    assert code == 0 and "ID" in out and "strict" in out
    code, out, _ = await wf(capsys, server, "schedules", "--json")
    assert orjson.loads(out)["schedules"][0]["workflow_id"] == "ok"
    code, out, _ = await wf(capsys, server, "stats")
    assert code == 0 and "runs.active: 0" in out


async def test_streaming_commands(server: SocketServer, capsys, service) -> None:
    await service.submit("ok", None, run_id="A")
    code, out, _ = await wf(capsys, server, "stream", "A", "s", "--follow")
    assert code == 0 and out == "hello\n"
    code, out, _ = await wf(capsys, server, "stream", "A", "s", "--json")
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [c["seq"] for c in lines] == [0, 1]
    code, out, _ = await wf(capsys, server, "tail", "--level", "info")
    assert code == 0 and "run.started" in out and "step.completed" not in out
    code, out, _ = await wf(capsys, server, "tail", "--json")
    assert [orjson.loads(line)["event"] for line in out.splitlines()] == [
        "run.started",
        "step.completed",
    ]


async def test_socket_from_env_and_config(
    server: SocketServer, capsys, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WF_SOCKET", str(server.path))
    code = await asyncio.to_thread(cli.run, ["workflows"])
    assert code == 0
    monkeypatch.delenv("WF_SOCKET")
    conf_dir = tmp_path / "conf"
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
