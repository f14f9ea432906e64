"""The socket client against the real engine behind an in-process server."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import storage
from orchestrator import logs
from orchestrator.api import errors, protocol, service
from orchestrator.client import Client, DaemonUnreachable, RemoteError
from orchestrator.daemon.server import SocketServer
from orchestrator.engine.engine import Engine
from tests.orchestrator import engine_workflows
from tests.orchestrator.conftest import FaultyStorage, reach, until

Case = Callable[[Client, Engine], Awaitable[None]]
CASES: dict[type[service.Request[Any]], Case] = {}


def case(request_type: type[service.Request[Any]]) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[request_type] = fn
        return fn

    return register


async def _completed_echo(c: Client, run_id: str = "done") -> dict[str, Any]:
    await c.submit("echo", {"a": 1}, run_id=run_id, tags=["x"])
    return await c.wait(run_id)


async def _expect_code(code: str, call: Awaitable[Any]) -> None:
    with pytest.raises(RemoteError) as info:
        await call
    assert info.value.code == code


@case(service.Submit)
async def _submit(c: Client, engine: Engine) -> None:
    run = await c.submit(
        "echo", {"a": 1}, run_id="r1", idempotency_key="k", tags=["x", "y"], delay="2s",
        priority=3,
    )
    assert (run["run_id"], run["status"]) == ("r1", "pending")
    stored = await engine.get("r1")
    assert stored["input"] == {"a": 1}
    assert stored["idempotency_key"] == "k"
    assert stored["tags"] == ["x", "y"]
    assert stored["priority"] == 3
    assert stored["scheduled_at"] == pytest.approx(stored["created_at"] + 2.0)
    again = await c.submit("echo", {"other": 2}, idempotency_key="k")
    assert again["run_id"] == "r1"  # the same (workflow, key): the existing run


@case(service.Get)
async def _get(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    detail = await c.get("done")
    assert detail == await engine.get("done")  # the wire changes nothing
    assert detail["output"] == {"echo": {"a": 1}}
    assert [s["step_id"] for s in detail["steps"]] == ["fetch"]
    assert detail["metadata"] == {"progress": 50}
    assert detail["waitpoints"] == [] and detail["compensations"] == []
    await _expect_code("NOT_FOUND", c.get("nope"))


@case(service.List)
async def _list(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    assert [r["run_id"] for r in (await c.list(tag="x"))["runs"]] == ["done"]
    assert (await c.list(tag="nope"))["runs"] == []
    assert (await c.list(status="failed"))["runs"] == []
    assert [r["run_id"] for r in (await c.list(workflow_id="echo", limit=1))["runs"]] == ["done"]


@case(service.Wait)
async def _wait(c: Client, engine: Engine) -> None:
    assert (await _completed_echo(c))["status"] == "completed"
    await c.submit("signal", None, run_id="s")
    await reach(engine, "s", "waiting")
    assert (await c.wait("s", timeout=0.01))["status"] == "waiting"


@case(service.Cancel)
async def _cancel(c: Client, engine: Engine) -> None:
    await c.submit("reserve-wait", None, run_id="rw")
    await reach(engine, "rw", "waiting")
    cancelled = await c.cancel("rw", compensate=False, reason="test")
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["message"] == "test"
    assert (await engine.get("rw"))["compensations"] == []
    assert engine_workflows.COMPENSATED == []
    await _expect_code("RUN_NOT_ACTIVE", c.cancel("rw"))


@case(service.Pause)
async def _pause(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    await _expect_code("RUN_NOT_ACTIVE", c.pause("done"))
    await c.submit("signal", None, run_id="s")
    await reach(engine, "s", "waiting")
    assert (await c.pause("s"))["status"] == "paused"
    assert await c.pause(workflow_id="echo") == {"workflow_id": "echo", "paused": True}
    assert (await c.submit("echo", 1, run_id="held"))["status"] == "pending"
    assert (await c.get("held"))["pending"] == {"paused_workflow": True}
    await _expect_code("INVALID_PARAMS", c.pause())
    await _expect_code("NOT_FOUND", c.pause(workflow_id="nope"))


@case(service.Resume)
async def _resume(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    await _expect_code("RUN_NOT_ACTIVE", c.resume("done"))
    await c.submit("echo", 1, run_id="later", delay="1h")
    await c.resume("later")  # a delayed run starts now
    assert (await c.wait("later"))["status"] == "completed"


@case(service.Reschedule)
async def _reschedule(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    await _expect_code("RUN_NOT_ACTIVE", c.reschedule("done"))
    await c.submit("echo", 1, run_id="later", delay="1h")
    moved = await c.reschedule("later", delay="2h")
    assert moved["scheduled_at"] == pytest.approx(moved["created_at"] + 7200, abs=5)
    await c.reschedule("later")  # neither delay nor at: now
    assert (await c.wait("later"))["status"] == "completed"


@case(service.Retry)
async def _retry(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    await _expect_code("RUN_NOT_ACTIVE", c.retry("done", mode="retrigger"))
    await c.submit("fail", None, run_id="f")
    assert (await c.wait("f"))["status"] == "failed"
    again = await c.retry("f", mode="retrigger")
    assert again["attempt"] == 2
    assert (await c.wait("f"))["status"] == "failed"
    assert [p["attempt"] for p in (await c.get("f"))["previous_attempts"]] == [1]
    await _expect_code("NOT_FOUND", c.retry("nope"))


@case(service.Bulk)
async def _bulk(c: Client, engine: Engine) -> None:
    for n in range(3):
        await c.submit("echo", n, run_id=f"later-{n}", delay="1h", tags=["bulk"])
    await _completed_echo(c)
    dry = await c.bulk("cancel", {"tag": "bulk"}, dry_run=True)
    assert dry == {"matched": 3, "eligible": 3, "done": 0, "dry_run": True}
    assert await c.bulk("cancel", {"workflow_id": "echo"}) == {
        "matched": 4, "eligible": 3, "done": 3}
    assert {r["status"] for r in (await c.list(tag="bulk"))["runs"]} == {"cancelled"}
    with pytest.raises(RemoteError) as info:
        await c.bulk("cancel", {"status": "sleepy"})
    assert info.value.code == "INVALID_PARAMS" and info.value.data["field"] == "filter.status"
    await _expect_code("INVALID_PARAMS", c.bulk("explode", {}))


@case(service.Replay)
async def _replay(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    assert await c.replay("done") == {
        "diverged": False, "detail": [], "reached": "completed", "recorded_status": "completed",
    }


@case(service.Export)
async def _export(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    doc = await c.export(("done",))
    assert doc["format"] == "wf-journal/1"
    (run,) = doc["runs"]
    assert run["run"]["run_id"] == "done" and run["run"]["status"] == "completed"
    assert [e["seq"] for e in run["entries"]] == list(range(1, len(run["entries"]) + 1))
    await _expect_code("NOT_FOUND", c.export(("nope",)))
    await _expect_code("INVALID_PARAMS", c.export(()))


@case(service.Fork)
async def _fork(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    fork = await c.fork("done", from_step="fetch", run_id_new="forked", reason="again")
    assert fork["run_id"] == "forked"
    assert fork["forked_from"]["run_id"] == "done"
    assert fork["forked_from"]["reason"] == "again"
    assert (await c.wait("forked"))["output"] == {"echo": {"a": 1}}
    await _expect_code("INVALID_PARAMS", c.fork("done", from_step="never"))
    await _expect_code("INVALID_PARAMS", c.fork("done", run_id_new="forked"))
    await _expect_code("NOT_FOUND", c.fork("nope"))


@case(service.Amend)
async def _amend(c: Client, engine: Engine) -> None:
    await c.submit("fail", None, run_id="f")
    assert (await c.wait("f"))["status"] == "failed"
    await _expect_code("NOT_FOUND", c.amend("f", "nope", 1, "unknown step"))
    amended = await c.amend("f", "boom", {"fixed": True}, "by hand")
    assert amended["status"] == "failed"
    (row,) = (await c.get("f"))["audit"]
    assert row["new"] == {"status": "completed", "output": {"fixed": True}}
    assert row["peer_uid"] == os.getuid()  # from SO_PEERCRED
    assert (await c.retry("f"))["status"] in ("pending", "running", "completed")
    assert (await c.wait("f"))["status"] == "completed"
    await _completed_echo(c)
    await _expect_code("RUN_NOT_ACTIVE", c.amend("done", "fetch", 1, "completed"))
    await _expect_code("NOT_FOUND", c.amend("nope", "boom", 1, "unknown run"))


@case(service.SendEvent)
async def _send_event(c: Client, engine: Engine) -> None:
    await c.submit("event", {"type": "paid"}, run_id="ev")
    await reach(engine, "ev", "waiting")
    assert await c.send_event("paid", {"n": 1}, event_id="e1") == {
        "event_id": "e1", "resolved": 1, "started": [], "cancelled": 0}
    assert (await c.wait("ev"))["output"] == {"n": 1}
    assert await c.send_event("paid", {"n": 2}, event_id="e1") == {
        "event_id": "e1", "resolved": 0, "started": [], "cancelled": 0}
    sent = await c.send_event("other", None)
    assert sent["resolved"] == 0 and sent["event_id"]


@case(service.Events)
async def _events(c: Client, engine: Engine) -> None:
    await c.submit("event", {"type": "paid"}, run_id="ev")
    await reach(engine, "ev", "waiting")
    dry = await c.send_event("paid", {"n": 1}, dry_run=True)
    assert dry["would_resolve"] == [{"run_id": "ev", "waitpoint_id": "event:paid:0"}]
    assert (await c.events())["events"] == []
    await c.send_event("paid", {"n": 1}, event_id="e1")
    (event,) = (await c.events(type="paid"))["events"]
    assert event["event_id"] == "e1" and event["resolved"][0]["run_id"] == "ev"
    with pytest.raises(RemoteError) as info:
        await c.events(limit=0)
    assert info.value.code == "INVALID_PARAMS" and info.value.data["field"] == "limit"


@case(service.Signal)
async def _signal(c: Client, engine: Engine) -> None:
    await c.submit("signal", None, run_id="s")
    await reach(engine, "s", "waiting")
    assert await c.signal("s", "poke", [1, 2]) == {"delivered": False}  # to the inbox
    assert await c.signal("s", "finish", 42) == {"delivered": True}
    assert (await c.wait("s"))["output"] == 42
    await _expect_code("RUN_NOT_ACTIVE", c.signal("s", "finish", 1))


@case(service.CompleteToken)
async def _complete_token(c: Client, engine: Engine) -> None:
    await c.submit("token", None, run_id="t")
    await reach(engine, "t", "waiting")
    token = (await c.get("t"))["metadata"]["token"]
    assert await c.complete_token(token, {"ok": True}) == {"run_id": "t"}
    assert (await c.wait("t"))["output"] == {"ok": True}
    await _expect_code("TOKEN_CONFLICT", c.complete_token(token, None))
    await _expect_code("NOT_FOUND", c.complete_token("no-such-token", None))


@case(service.Workflows)
async def _workflows(c: Client, engine: Engine) -> None:
    listed = (await c.workflows())["workflows"]
    assert [w["id"] for w in listed] == sorted(d.id for d in engine_workflows.registry())
    assert set(listed[0]) == {"id", "version", "description", "tags", "timeout", "origin"}


@case(service.Daemons)
async def _daemons(c: Client, engine: Engine) -> None:
    assert await c.daemons() == {"daemons": []}  # this bare engine registered no lease
    await engine.storage.execute(storage.RegisterDaemon(
        daemon_id="d1", name="h:1", host="h", pid=1, version="v", socket="/s", http="",
        lease=30))
    (d,) = (await c.daemons())["daemons"]
    assert (d["daemon_id"], d["name"], d["live"], d["runs"], d["this"]) == (
        "d1", "h:1", True, 0, False)


@case(service.Versions)
async def _versions(c: Client, engine: Engine) -> None:
    await c.submit("event", {"type": "paid"}, run_id="ev")
    await reach(engine, "ev", "waiting")
    (event,) = (await c.versions(workflow_id="event"))["workflows"]
    version = engine.registry.get("event").version  # type: ignore[union-attr]
    assert event == {"workflow_id": "event", "registered_version": version, "live_runs": 1,
                     "versions": [{"version": version, "live_runs": 1}], "patches": []}
    listed = (await c.versions())["workflows"]
    assert {w["workflow_id"] for w in listed} >= {"event", "echo"}


@case(service.Schedules)
async def _schedules(c: Client, engine: Engine) -> None:
    assert await c.schedules() == {"schedules": []}
    await c.schedule_create("nightly", "echo", cron="0 3 * * *", timezone="Europe/Paris")
    (listed,) = (await c.schedules())["schedules"]
    assert {k: listed[k] for k in ("name", "workflow_id", "rule", "timezone", "last_fire_at",
                                   "paused", "skipped", "missed")} == {
        "name": "nightly", "workflow_id": "echo", "rule": "cron 0 3 * * *",
        "timezone": "Europe/Paris", "last_fire_at": None, "paused": False, "skipped": 0,
        "missed": 0}
    assert listed["next_fire_at"] > engine.clock.now()


@case(service.ScheduleCreate)
async def _schedule_create(c: Client, engine: Engine) -> None:
    made = await c.schedule_create("tick", "echo", every="1h", input={"a": 1}, jitter="1s")
    assert (made["rule"], made["input"], made["source"]) == ("every 3600s", {"a": 1}, "api")
    await _expect_code("INVALID_PARAMS", c.schedule_create("bad", "echo", cron="0 0 30 2 *"))
    with pytest.raises(errors.InvalidParams) as info:  # checked by the wire schema
        protocol.parse_params(protocol.METHODS["schedule_create"],
                              {"name": "bad", "workflow_id": "echo", "jitter": "soon"})
    assert info.value.data["field"] == "jitter"
    await _expect_code("NOT_FOUND", c.schedule_create("x", "nope", every=60))


@case(service.ScheduleDelete)
async def _schedule_delete(c: Client, engine: Engine) -> None:
    await c.schedule_create("tick", "echo", every="1h")
    assert await c.schedule_delete("tick") == {"deleted": True}
    await _expect_code("NOT_FOUND", c.schedule_delete("tick"))


@case(service.SchedulePause)
async def _schedule_pause(c: Client, engine: Engine) -> None:
    await c.schedule_create("tick", "echo", every="1h")
    paused = await c.schedule_pause("tick")
    assert paused["paused"] is True and paused["next_fire_at"] is None


@case(service.ScheduleResume)
async def _schedule_resume(c: Client, engine: Engine) -> None:
    await c.schedule_create("tick", "echo", every="1h")
    await c.schedule_pause("tick")
    resumed = await c.schedule_resume("tick")
    assert resumed["paused"] is False and resumed["next_fire_at"] is not None


@case(service.ScheduleTrigger)
async def _schedule_trigger(c: Client, engine: Engine) -> None:
    await c.schedule_create("tick", "echo", every="1h", input={"a": 2})
    (run,) = (await c.schedule_trigger("tick"))["runs"]
    assert run["run_id"].startswith("sched:tick:") and run["triggered_by"] == "schedule"
    assert (await c.wait(run["run_id"]))["output"] == {"echo": {"a": 2}}


@case(service.ScheduleBackfill)
async def _schedule_backfill(c: Client, engine: Engine) -> None:
    await c.schedule_create("daily", "echo", cron="0 3 * * *", overlap="allow")
    runs = (await c.schedule_backfill("daily", start="2026-01-01T03:00:00Z",
                                      end="2026-01-03T03:00:00Z"))["runs"]
    assert [r["run_id"] for r in runs] == [
        f"sched:daily:2026-01-0{d}T03:00:00Z" for d in (1, 2, 3)]
    await _expect_code("INVALID_PARAMS", c.schedule_backfill("daily", start=10, end=5))


@case(service.Stats)
async def _stats(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    stats = await c.stats()
    assert stats["runs"] == {"completed": 1}
    assert {"waiting_waitpoints", "timers", "events", "actors", "scheduler"} <= set(stats)


@case(service.Prune)
async def _prune(c: Client, engine: Engine) -> None:
    await _completed_echo(c)
    assert await c.prune(older_than=0, dry_run=True) == {"runs": 1, "events": 0, "dry_run": True}
    assert (await c.prune(older_than=0, status="completed"))["runs"] == 1
    assert (await c.list())["runs"] == []
    await _expect_code("INVALID_PARAMS", c.prune(status="running"))


@case(service.Tail)
async def _tail(c: Client, engine: Engine) -> None:
    subscribed = logs.subscriber_count()
    async with contextlib.aclosing(c.tail(run_id="t", level="info")) as records:
        first = asyncio.ensure_future(anext(records))
        await until(lambda: logs.subscriber_count() > subscribed, "the tail to subscribe")
        await c.submit("echo", None, run_id="t")
        seen = [await first]
        while seen[-1]["event"] != "run.completed":
            seen.append(await anext(records))
    events = [r["event"] for r in seen]
    assert events[:2] == ["run.submitted", "run.started"]
    assert {r["run_id"] for r in seen} == {"t"}
    assert "step.completed" not in events  # debug: under the floor


@case(service.Watch)
async def _watch(c: Client, engine: Engine) -> None:
    await c.submit("signal", None, run_id="s")
    await reach(engine, "s", "waiting")
    changes = c.watch("s")
    assert (await anext(changes))["status"] == "waiting"
    await c.signal("s", "finish", None)
    statuses = [change["status"] async for change in changes]
    assert statuses[-1] == "completed"  # and then the stream ended by itself


@case(service.Stream)
async def _stream(c: Client, engine: Engine) -> None:
    await c.submit("stream", None, run_id="st")
    chunks = [ch async for ch in c.stream("st", "s", follow=True)]
    assert "".join(ch["chunk"] or "" for ch in chunks) == "hello"
    assert chunks[-1]["final"]
    assert set(chunks[0]) == {"stream_id", "seq", "encoding", "chunk", "final", "at"}
    await _expect_code("NOT_FOUND", _drain(c.stream("nope", "s")))


@case(service.Changes)
async def _changes(c: Client, engine: Engine) -> None:
    async with contextlib.aclosing(c.changes(since=0)) as changes:
        first = await anext(changes)
        assert first["type"] == "gap"  # seq 0 is from before this daemon's life
        await c.submit("echo", 1, run_id="ch")
        seen = []
        while not seen or seen[-1]["status"] != "completed":
            change = await anext(changes)
            if change["run_id"] == "ch":
                seen.append(change)
    assert [ch["status"] for ch in seen] == ["pending", "running", "completed"]
    assert seen[0]["workflow_id"] == "echo"
    seqs = [ch["seq"] for ch in seen]
    assert seqs == sorted(seqs)
    async with contextlib.aclosing(c.changes(since=seqs[0])) as again:
        assert [(await anext(again))["seq"] for _ in range(2)] == seqs[1:]


async def _drain(it: Any) -> None:
    async for _ in it:
        pass


@pytest.mark.both_backends  # every method (list search, prune, export, versions) on PostgreSQL
@pytest.mark.parametrize("request_type", service.REQUESTS, ids=lambda r: r.method)
async def test_every_method_round_trips(
    request_type: type[service.Request[Any]],
    server: SocketServer,
    engine: Engine,
    log_feed: object,
) -> None:
    """Each method of the service, through the client, the socket and the real engine,
    answers with the right shape or the right error code."""
    assert request_type in CASES, f"no round-trip case for {request_type.method!r}"
    async with Client.connect(server.path) as c:
        await CASES[request_type](c, engine)
        assert "workflows" in await c.workflows()  # the connection is still fine


async def test_error_reply_raises_remote_error_of_the_matching_class(
    server: SocketServer, engine: Engine
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
        await c.submit("token", None, run_id="t")
        await reach(engine, "t", "waiting")
        token = (await c.get("t"))["metadata"]["token"]
        with pytest.raises(RemoteError, match="TOKEN_CONFLICT"):
            await c.complete_token(token, 1)
            await c.complete_token(token, 1)
        with pytest.raises(RemoteError) as info:
            await c.request("submit", {"workflow_id": "echo"})
        assert info.value.code == "INVALID_PARAMS" and info.value.data["field"] == "input"
        with pytest.raises(RemoteError) as info:
            async for _ in c.stream("nope", "s"):
                pass
        assert info.value.code == "NOT_FOUND"
        # The connection is still usable after errors.
        run = await c.submit("echo", 1)
        assert (await c.wait(run["run_id"]))["status"] == "completed"


async def test_storage_full_at_submit_reaches_the_client_as_storage_full(
    server: SocketServer, store: FaultyStorage
) -> None:
    store.fail("create_run", storage.StorageFull("database or disk is full"))
    async with Client.connect(server.path) as c:
        with pytest.raises(errors.StorageFull) as info:
            await c.submit("echo", 1, run_id="r")
        assert info.value.code == "STORAGE_FULL"
        await _expect_code("NOT_FOUND", c.get("r"))  # nothing was committed
        assert (await c.submit("echo", 1, run_id="r"))["run_id"] == "r"  # space is back


async def test_concurrent_calls_share_one_connection(
    server: SocketServer, engine: Engine
) -> None:
    async with Client.connect(server.path) as c:
        slow = await c.submit("signal", None)
        await reach(engine, slow["run_id"], "waiting")
        waiter = asyncio.create_task(c.wait(slow["run_id"]))
        submitted = await asyncio.gather(*(c.submit("echo", i) for i in range(20)))
        assert [r["input"] for r in submitted] == list(range(20))
        assert not waiter.done()
        await c.signal(slow["run_id"], "finish", "done")
        assert (await waiter)["output"] == "done"
    assert server.stats().connections_total == 1


async def test_breaking_out_of_a_stream_cancels_it_on_the_daemon(
    server: SocketServer, engine: Engine
) -> None:
    await engine.submit("signal", None, run_id="r")
    await reach(engine, "r", "waiting")
    async with Client.connect(server.path) as c:
        async with contextlib.aclosing(c.watch("r")) as changes:
            async for change in changes:
                assert change["status"] == "waiting"
                break
        # Served after the $cancel on the same connection, so the watch is gone by now.
        assert (await c.workflows())["workflows"]
        assert server.stats().requests_in_flight == 0


async def test_unreachable_daemon_names_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "nobody-home.sock"
    with pytest.raises(DaemonUnreachable) as info:
        async with Client.connect(path):
            pass
    assert str(path) in str(info.value)
    assert "wf daemon" in str(info.value)


async def test_connection_lost_fails_pending_calls(engine: Engine, sock_path: Path) -> None:
    srv = SocketServer(engine, sock_path)
    await srv.start()
    async with Client.connect(sock_path) as c:
        slow = await c.submit("signal", None)
        waiter = asyncio.create_task(c.wait(slow["run_id"]))
        # Read after the wait on the same connection: once answered, the wait is in flight.
        await c.workflows()
        assert srv.stats().requests_in_flight == 1
        await srv.close()
        with pytest.raises(DaemonUnreachable, match=str(sock_path)):
            await waiter
        with pytest.raises(DaemonUnreachable):
            await c.workflows()


async def test_request_too_large_reaches_the_caller(server: SocketServer) -> None:
    async with Client.connect(server.path) as c:
        with pytest.raises(RemoteError) as info:
            await c.submit("echo", "x" * 10_000)
        assert info.value.code == "REQUEST_TOO_LARGE"
    async with Client.connect(server.path) as c:
        run = await c.submit("echo", "small")
        assert (await c.wait(run["run_id"]))["status"] == "completed"
