from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from orchestrator import logs
from orchestrator.daemon.server import SocketInUse, SocketServer
from orchestrator.engine.engine import Engine
from tests.orchestrator.conftest import FaultyStorage, Raw, reach, until


async def test_socket_file_is_mode_0600(server: SocketServer) -> None:
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_close_removes_the_socket_file(engine: Engine, sock_path: Path) -> None:
    srv = SocketServer(engine, sock_path)
    await srv.start()
    await srv.close()
    assert not sock_path.exists()


async def test_stale_socket_file_is_replaced(engine: Engine, sock_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves behind
    assert sock_path.exists()
    srv = SocketServer(engine, sock_path)
    await srv.start()
    try:
        raw = await Raw.open(sock_path)
        assert (await raw.ask({"id": 1, "method": "stats"}))["result"]["runs"] == {}
        await raw.close()
    finally:
        await srv.close()


async def test_live_socket_is_refused(server: SocketServer, engine: Engine) -> None:
    second = SocketServer(engine, server.path)
    with pytest.raises(SocketInUse, match=str(server.path)):
        await second.start()
    raw = await Raw.open(server.path)  # the first server is untouched
    assert "result" in await raw.ask({"id": 1, "method": "workflows"})
    await raw.close()


async def test_regular_file_at_socket_path_is_not_replaced(
    engine: Engine, sock_path: Path
) -> None:
    sock_path.write_text("precious")
    with pytest.raises(RuntimeError, match="not a socket"):
        await SocketServer(engine, sock_path).start()
    assert sock_path.read_text() == "precious"


async def test_parse_error_keeps_the_connection(raw: Raw) -> None:
    reply = await raw.ask(b"{this is not json\n")
    assert reply["id"] is None
    assert reply["error"]["code"] == "PARSE_ERROR"
    reply = await raw.ask(
        {"id": 2, "method": "submit", "params": {"workflow_id": "echo", "input": 1}}
    )
    assert reply["id"] == 2
    assert reply["result"]["workflow_id"] == "echo"
    run_id = reply["result"]["run_id"]
    reply = await raw.ask({"id": 3, "method": "wait", "params": {"run_id": run_id}})
    assert reply["result"]["status"] == "completed"


async def test_unknown_method(raw: Raw) -> None:
    reply = await raw.ask({"id": "a", "method": "explode"})
    assert reply["id"] == "a"
    assert reply["error"]["code"] == "METHOD_NOT_FOUND"
    assert reply["error"]["data"] == {"method": "explode"}


async def test_invalid_params_missing_and_wrong_type(raw: Raw) -> None:
    reply = await raw.ask({"id": 1, "method": "submit", "params": {"input": {}}})
    assert reply["error"]["code"] == "INVALID_PARAMS"
    assert reply["error"]["data"]["field"] == "workflow_id"
    reply = await raw.ask({"id": 2, "method": "list", "params": {"limit": "ten"}})
    assert reply["error"]["code"] == "INVALID_PARAMS"
    assert reply["error"]["data"]["field"] == "limit"
    assert "limit" in reply["error"]["message"]


async def test_service_errors_become_error_replies(raw: Raw) -> None:
    reply = await raw.ask({"id": 1, "method": "get", "params": {"run_id": "missing"}})
    assert reply["error"] == {
        "code": "NOT_FOUND",
        "message": "run 'missing' not found",
        "data": {"run_id": "missing"},
    }


async def test_request_too_large_closes_only_that_connection(server: SocketServer) -> None:
    other = await Raw.open(server.path)
    big = await Raw.open(server.path)
    await big.send(b'{"id": 1, "method": "get", "params": {"run_id": "' + b"x" * 8000 + b'"}}\n')
    reply = await big.recv()
    assert reply["error"]["code"] == "REQUEST_TOO_LARGE"
    assert await big.reader.read() == b""  # closed by the server
    reply = await other.ask({"id": 1, "method": "workflows"})
    assert "result" in reply
    await other.close()
    await big.close()
    assert server.stats().errors_by_code["REQUEST_TOO_LARGE"] == 1


async def test_the_too_large_reply_survives_the_rest_of_the_line_still_arriving(
    server: SocketServer,
) -> None:
    """Far more than the limit in one write (more than the socket buffers hold): the server
    answers before the line ends. Closing with the rest unread would reset the connection and
    the reply could be lost (Linux resets a Unix socket closed with unread data); the server
    reads the rest away first, then closes cleanly."""
    for _ in range(5):
        big = await Raw.open(server.path)
        big.writer.write(b'{"id": 1, "method": "get", "params": {"run_id": "'
                         + b"x" * 2_000_000 + b'"}}\n')
        reply = await big.recv()
        assert reply["error"]["code"] == "REQUEST_TOO_LARGE"
        await big.writer.drain()  # everything was taken: no broken pipe
        assert await big.reader.read() == b""
        await big.close()


async def test_unexpected_exception_is_internal_and_server_survives(
    server: SocketServer, raw: Raw, store: FaultyStorage
) -> None:
    """Not a storage error (which has a code of its own): a bug, answered as INTERNAL."""
    store.fail("load_journal", RuntimeError("handler exploded"))
    with capture_logs() as captured:
        reply = await raw.ask({"id": 1, "method": "get", "params": {"run_id": "crash"}})
    assert reply["error"]["code"] == "INTERNAL"
    assert "handler exploded" in reply["error"]["message"]
    assert any(e["event"] == "socket.internal_error" for e in captured)
    assert "result" in await raw.ask({"id": 2, "method": "workflows"})
    assert server.stats().errors_by_code["INTERNAL"] == 1


async def test_pipelined_requests_are_served_concurrently(raw: Raw, engine: Engine) -> None:
    run = (
        await raw.ask(
            {"id": 1, "method": "submit", "params": {"workflow_id": "signal", "input": None}}
        )
    )["result"]
    await reach(engine, run["run_id"], "waiting")
    # The wait is in flight while the signal that ends it is served on the same connection.
    await raw.send({"id": 2, "method": "wait", "params": {"run_id": run["run_id"]}})
    await raw.send(
        {
            "id": 3,
            "method": "signal",
            "params": {"run_id": run["run_id"], "name": "finish", "payload": 42},
        }
    )
    replies = {r["id"]: r for r in [await raw.recv(), await raw.recv()]}
    assert replies[3]["result"] == {"delivered": True}
    assert replies[2]["result"]["status"] == "completed"
    assert replies[2]["result"]["output"] == 42


async def test_stream_sends_events_then_a_result(raw: Raw, engine: Engine) -> None:
    await engine.submit("stream", {}, run_id="r")
    await engine.wait("r")
    await raw.send({"id": 9, "method": "stream", "params": {"run_id": "r", "stream_id": "s"}})
    lines = [await raw.recv() for _ in range(4)]
    assert [line["id"] for line in lines] == [9, 9, 9, 9]
    assert [line["event"]["seq"] for line in lines[:3]] == [0, 1, 2]
    assert [line["event"]["chunk"] for line in lines[:3]] == ["hel", "lo", None]
    assert [line["event"]["final"] for line in lines[:3]] == [False, False, True]
    assert lines[3] == {"id": 9, "result": {"events": 3, "dropped": 0}}


async def test_stream_error_before_first_item(raw: Raw) -> None:
    reply = await raw.ask(
        {"id": 1, "method": "stream", "params": {"run_id": "nope", "stream_id": "s"}}
    )
    assert reply["error"]["code"] == "NOT_FOUND"
    assert reply["error"]["data"] == {"run_id": "nope"}
    assert "result" in await raw.ask({"id": 2, "method": "workflows"})


async def test_slow_tail_reader_gets_lagged_notice(server: SocketServer, log_feed: object) -> None:
    """The outbound queue holds 4 lines; the rest is dropped and reported, never buffered."""
    flood = 3000  # 3 MB of log lines: far more than the socket and the reader buffer
    raw = await Raw.open(server.path, limit=2**16)
    subscribed = logs.subscriber_count()
    await raw.send({"id": 1, "method": "tail", "params": {"run_id": "flood"}})
    await until(lambda: logs.subscriber_count() > subscribed, "the tail to subscribe")
    log = structlog.get_logger("test")
    for n in range(flood):  # the reader has not read a byte yet
        log.info("flood", run_id="flood", n=n, pad="x" * 1000)
        await asyncio.sleep(0)  # one loop turn: the tail moves the record to the connection
    events: list[int] = []
    notices: list[int] = []

    async def read_until_an_end_marker() -> int:
        while True:
            event = (await raw.recv())["event"]
            if event.get("type") == "lagged":
                notices.append(event["dropped"])
            elif event["event"] == "end":
                return int(event["k"])
            else:
                events.append(event["n"])

    reader = asyncio.create_task(read_until_an_end_marker())
    k = 0
    while not reader.done():  # markers until one gets through: those before it were dropped
        log.info("end", run_id="flood", k=k)
        k += 1
        await asyncio.wait([reader], timeout=0.01)
    dropped_markers = reader.result()
    assert notices and sum(notices) > 0
    # Every record before the marker that got through was either delivered or counted.
    assert len(events) + sum(notices) == flood + dropped_markers
    assert events == sorted(events)
    assert server.stats().events_dropped >= sum(notices)
    await raw.close()


async def test_cancel_control_method_stops_a_stream(raw: Raw, engine: Engine) -> None:
    await engine.submit("signal", None, run_id="r")
    await reach(engine, "r", "waiting")
    await raw.send({"id": 1, "method": "watch", "params": {"run_id": "r"}})
    first = await raw.recv()
    assert first["id"] == 1
    assert (first["event"]["run_id"], first["event"]["status"]) == ("r", "waiting")
    reply = await raw.ask({"id": 2, "method": "$cancel", "params": {"id": 1}})
    assert reply == {"id": 2, "result": {"cancelled": True}}
    assert "result" in await raw.ask({"id": 3, "method": "workflows"})


async def test_permission_denied_for_other_uid(engine: Engine, sock_path: Path) -> None:
    srv = SocketServer(engine, sock_path, peer_uid_of=lambda _sock: 4242)
    await srv.start()
    try:
        raw = await Raw.open(sock_path)
        reply = await raw.recv()
        assert reply["error"]["code"] == "PERMISSION_DENIED"
        assert reply["error"]["data"] == {"uid": 4242}
        assert await raw.reader.read() == b""
        await raw.close()
        assert srv.stats().connections_refused == 1
    finally:
        await srv.close()


async def test_allowed_uids_are_admitted(engine: Engine, sock_path: Path) -> None:
    srv = SocketServer(engine, sock_path, allowed_uids=[4242], peer_uid_of=lambda _sock: 4242)
    await srv.start()
    try:
        raw = await Raw.open(sock_path)
        assert "result" in await raw.ask({"id": 1, "method": "workflows"})
        await raw.close()
    finally:
        await srv.close()


def _ask_as(uid: int, path: Path) -> bytes:
    """Fork a child that drops to ``uid``, connects and reports the first line it receives
    (it sends nothing: the refusal comes unasked, and the server may close before a send)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: plain blocking syscalls only, then _exit
        code = 1
        try:
            os.close(read_fd)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            os.write(write_fd, s.makefile("rb").readline())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        out = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
async def test_permission_denied_for_real_peer_uid(engine: Engine) -> None:
    """A real SO_PEERCRED check: a client process running as `nobody` is refused."""
    nobody = pwd.getpwnam("nobody").pw_uid
    # pytest's tmp dirs are 0700 under root's; `nobody` needs a path it can traverse.
    sock_dir = Path(tempfile.mkdtemp(prefix="wf-peercred-", dir="/tmp"))
    os.chmod(sock_dir, 0o755)
    sock_path = sock_dir / "wf.sock"
    srv = SocketServer(engine, sock_path)
    await srv.start()
    os.chmod(sock_path, 0o666)  # let the file mode through; the uid check must still refuse
    try:
        out = await asyncio.to_thread(_ask_as, nobody, sock_path)
        assert b'"PERMISSION_DENIED"' in out
        assert srv.stats().connections_refused == 1
    finally:
        await srv.close()
        shutil.rmtree(sock_dir)


async def test_stats_count_requests_and_errors(server: SocketServer, raw: Raw) -> None:
    await raw.ask({"id": 1, "method": "workflows"})
    await raw.ask({"id": 2, "method": "nope"})
    stats = server.stats()
    assert stats.connections_open == 1
    assert stats.requests_served == 1
    assert stats.errors_by_code == {"METHOD_NOT_FOUND": 1}
    assert stats.to_dict()["errors_by_code"] == {"METHOD_NOT_FOUND": 1}


async def test_close_ends_open_streams(engine: Engine, sock_path: Path) -> None:
    srv = SocketServer(engine, sock_path)
    await srv.start()
    await engine.submit("signal", None, run_id="r")
    raw = await Raw.open(sock_path)
    await raw.send({"id": 1, "method": "watch", "params": {"run_id": "r"}})
    await raw.recv()
    await srv.close()
    # The stream ends with the connection: events the run sent before the close may still be
    # in flight (it starts and parks meanwhile), then EOF.
    rest = await asyncio.wait_for(raw.reader.read(), 5)
    assert raw.reader.at_eof()
    assert all(line.startswith(b'{"id":1,"event"') for line in rest.splitlines()), rest
    assert srv.stats().connections_open == 0
    await raw.close()


async def test_stop_accepting_keeps_open_connections(server: SocketServer, raw: Raw) -> None:
    server.stop_accepting()
    assert "result" in await raw.ask({"id": 1, "method": "workflows"})
    with pytest.raises(OSError):
        await Raw.open(server.path)
