from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from orchestrator.api import errors
from orchestrator.api.service import Service
from orchestrator.client import Client, DaemonUnreachable, RemoteError
from orchestrator.daemon.server import SocketServer
from tests.orchestrator.fake_service import FakeService


def test_fake_service_satisfies_the_protocol() -> None:
    fake: Service = FakeService()
    assert isinstance(fake, Service)


async def test_every_method_round_trips(server: SocketServer, service: FakeService) -> None:
    async with Client.connect(server.path) as c:
        run = await c.submit(
            "ok",
            {"a": 1},
            run_id="r1",
            idempotency_key="k",
            tags=["x", "y"],
            delay="2s",
            priority=3,
        )
        assert run["run_id"] == "r1" and run["status"] == "completed"
        assert service.calls[-1] == (
            "submit",
            {
                "workflow_id": "ok",
                "input": {"a": 1},
                "run_id": "r1",
                "idempotency_key": "k",
                "tags": ("x", "y"),
                "delay": 2.0,
                "priority": 3,
            },
        )
        detail = await c.get("r1")
        assert detail["steps"][0]["step_id"] == "fetch"
        assert detail["metadata"] == {"progress": 50}
        assert (await c.list(tag="x"))["runs"][0]["run_id"] == "r1"
        assert (await c.list(status="failed"))["runs"] == []
        assert (await c.wait("r1", timeout=1))["status"] == "completed"

        slow = await c.submit("slow", None)
        assert (await c.pause(slow["run_id"]))["status"] == "paused"
        assert (await c.resume(slow["run_id"]))["status"] == "running"
        cancelled = await c.cancel(slow["run_id"], compensate=False, reason="test")
        assert cancelled["status"] == "cancelled"
        assert service.calls[-1] == (
            "cancel",
            {"run_id": slow["run_id"], "compensate": False, "reason": "test"},
        )
        assert (await c.retry(slow["run_id"], mode="retrigger"))["status"] == "running"
        assert await c.replay("r1") == {"diverged": False, "detail": None}
        assert await c.send_event("paid", {"n": 1}, event_id="e1") == {
            "event_id": "e1",
            "resolved": 0,
        }
        assert await c.signal(slow["run_id"], "poke", [1, 2]) == {"delivered": False}
        assert await c.complete_token("t1", None) == {"run_id": "run-1"}
        assert len((await c.workflows())["workflows"]) == 4
        assert (await c.schedules())["schedules"][0]["cron"] == "* * * * *"
        assert "runs" in await c.stats()
        records = [r async for r in c.tail(level="info")]
        assert [r["event"] for r in records] == ["run.started"]
        chunks = [ch async for ch in c.stream("r1", "s", follow=True)]
        assert "".join(ch["chunk"] for ch in chunks) == "hello"
        assert set(chunks[0]) == {"stream_id", "seq", "encoding", "chunk", "final", "at"}
        changes = [ch async for ch in c.watch("r1")]
        assert changes == [{"run_id": "r1", "status": "completed"}]


async def test_error_reply_raises_remote_error_of_the_matching_class(
    server: SocketServer,
) -> None:
    async with Client.connect(server.path) as c:
        with pytest.raises(RemoteError) as info:
            await c.get("nope")
        err = info.value
        assert err.code == "NOT_FOUND"
        assert err.data == {"run_id": "nope"}
        assert isinstance(err, errors.NotFound)
        with pytest.raises(errors.ValidationFailed):
            await c.submit("strict", {})
        with pytest.raises(RemoteError, match="TOKEN_CONFLICT"):
            await c.complete_token("t", 1)
            await c.complete_token("t", 1)
        with pytest.raises(RemoteError) as info:
            await c.request("submit", {"workflow_id": "ok"})
        assert info.value.code == "INVALID_PARAMS" and info.value.data["field"] == "input"
        with pytest.raises(RemoteError) as info:
            async for _ in c.stream("nope", "s"):
                pass
        assert info.value.code == "NOT_FOUND"
        # The connection is still usable after errors.
        assert (await c.submit("ok", 1))["status"] == "completed"


async def test_concurrent_calls_share_one_connection(server: SocketServer) -> None:
    async with Client.connect(server.path) as c:
        slow = await c.submit("slow", None)
        waiter = asyncio.create_task(c.wait(slow["run_id"]))
        submitted = await asyncio.gather(*(c.submit("ok", i) for i in range(20)))
        assert [r["input"] for r in submitted] == list(range(20))
        assert not waiter.done()
        await c.signal(slow["run_id"], "finish", "done")
        assert (await waiter)["output"] == "done"
    assert server.stats().connections_total == 1


async def test_breaking_out_of_a_stream_cancels_it_on_the_daemon(
    server: SocketServer, service: FakeService
) -> None:
    await service.submit("slow", None, run_id="r")
    async with Client.connect(server.path) as c:
        async with contextlib.aclosing(c.watch("r")) as changes:
            async for change in changes:
                assert change["status"] == "running"
                break
        await asyncio.wait_for(service.watch_closed.wait(), 10)  # closed by $cancel
        assert (await c.workflows())["workflows"]
        assert server.stats().requests_in_flight == 0


async def test_unreachable_daemon_names_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "nobody-home.sock"
    with pytest.raises(DaemonUnreachable) as info:
        async with Client.connect(path):
            pass
    assert str(path) in str(info.value)
    assert "wf daemon" in str(info.value)


async def test_connection_lost_fails_pending_calls(service: FakeService, sock_path: Path) -> None:
    srv = SocketServer(service, sock_path)
    await srv.start()
    async with Client.connect(sock_path) as c:
        slow = await c.submit("slow", None)
        waiter = asyncio.create_task(c.wait(slow["run_id"]))
        await asyncio.wait_for(service.wait_entered.wait(), 10)
        await srv.close()
        with pytest.raises(DaemonUnreachable, match=str(sock_path)):
            await waiter
        with pytest.raises(DaemonUnreachable):
            await c.workflows()


async def test_request_too_large_reaches_the_caller(server: SocketServer) -> None:
    async with Client.connect(server.path) as c:
        with pytest.raises(RemoteError) as info:
            await c.submit("ok", "x" * 10_000)
        assert info.value.code == "REQUEST_TOO_LARGE"
    async with Client.connect(server.path) as c:
        assert (await c.submit("ok", "small"))["status"] == "completed"
