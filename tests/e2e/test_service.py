"""Every Service method through the real socket with :class:`orchestrator.client.Client`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client, RemoteError
from tests.e2e.conftest import (
    TERMINAL,
    Daemon,
    next_item,
    start_stream,
    stop_task,
    wait_file,
    wait_status,
    wait_until,
)

pytestmark = pytest.mark.slow

RUN_KEYS = {
    "run_id", "workflow_id", "status", "input", "output", "error", "tags",
    "created_at", "started_at", "finished_at", "parent_run_id",
}


# --- submit ---------------------------------------------------------------------------------


async def test_submit_returns_a_committed_run_record(client: Client) -> None:
    run = await client.submit("e2e-echo", {"a": 1})
    assert run.keys() >= RUN_KEYS
    assert run["workflow_id"] == "e2e-echo"
    assert run["input"] == {"a": 1}
    assert run["status"] in ("pending", "running", "completed")
    assert run["parent_run_id"] is None
    assert isinstance(run["created_at"], float)
    done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "completed"
    assert done["output"] == {"echo": {"a": 1}}
    assert done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]


async def test_submit_with_the_same_run_id_returns_the_existing_run(client: Client) -> None:
    first = await client.submit("e2e-echo", {"n": 1}, run_id="e2e-fixed-id")
    second = await client.submit("e2e-echo", {"n": 2}, run_id="e2e-fixed-id")
    assert first["run_id"] == second["run_id"] == "e2e-fixed-id"
    assert second["input"] == {"n": 1}
    await client.wait("e2e-fixed-id", timeout=10)
    runs = (await client.list(workflow_id="e2e-echo"))["runs"]
    assert [r["run_id"] for r in runs] == ["e2e-fixed-id"]


async def test_submit_with_the_same_idempotency_key_returns_the_existing_run(
    client: Client,
) -> None:
    first = await client.submit("e2e-echo", {"n": 1}, idempotency_key="k-1")
    second = await client.submit("e2e-echo", {"n": 2}, idempotency_key="k-1")
    other = await client.submit("e2e-echo", {"n": 3}, idempotency_key="k-2")
    assert first["run_id"] == second["run_id"] != other["run_id"]
    assert second["input"] == {"n": 1}
    assert len((await client.list(workflow_id="e2e-echo"))["runs"]) == 2


async def test_tags_are_stored_and_listable(client: Client) -> None:
    tagged = await client.submit("e2e-echo", {}, tags=["blue", "green"])
    await client.submit("e2e-echo", {}, tags=["red"])
    assert tagged["tags"] == ["blue", "green"]
    runs = (await client.list(tag="green"))["runs"]
    assert [r["run_id"] for r in runs] == [tagged["run_id"]]


async def test_delayed_run_stays_pending_until_its_delay(client: Client) -> None:
    run = await client.submit("e2e-echo", {}, delay="600ms")
    assert run["status"] == "pending"
    assert (await client.get(run["run_id"]))["status"] == "pending"
    done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "completed"
    assert done["started_at"] >= run["created_at"] + 0.6


# --- get / list / wait ----------------------------------------------------------------------


async def test_get_returns_steps_with_timings_waitpoints_and_metadata(client: Client) -> None:
    run = await client.submit("e2e-steps", {})
    await client.wait(run["run_id"], timeout=10)
    got = await client.get(run["run_id"])
    assert got["status"] == "completed"
    assert got["output"] == {"sum": 3}
    steps = {s["step_id"]: s for s in got["steps"]}
    assert set(steps) == {"first", "second"}
    for step in steps.values():
        assert step["status"] == "completed"
        assert step["attempt"] == 1
        assert step["started_at"] <= step["finished_at"]
        assert step["duration_ms"] is not None
    assert steps["second"]["output"] == 2
    assert got["metadata"] == {"stage": "done", "count": 2}
    assert got["waitpoints"] == []


async def test_get_shows_a_waiting_runs_waitpoint(client: Client) -> None:
    run = await client.submit("e2e-signal", {})
    got = await wait_status(client, run["run_id"], "waiting")
    [wp] = got["waitpoints"]
    assert wp["waitpoint_id"] == "signal:go:0"
    assert wp["kind"].lower() == "signal"
    assert wp["resolved_at"] is None
    await client.signal(run["run_id"], "go", 1)
    done = await client.wait(run["run_id"], timeout=10)
    [wp] = (await client.get(run["run_id"]))["waitpoints"]
    assert done["status"] == "completed"
    assert wp["resolved_at"] is not None
    assert wp["payload"] == 1


async def test_list_filters_by_status_workflow_and_limit(client: Client) -> None:
    ok = [await client.submit("e2e-echo", {"i": i}) for i in range(3)]
    bad = await client.submit("e2e-fail", {})
    waiting = await client.submit("e2e-signal", {})
    for r in [*ok, bad]:
        await client.wait(r["run_id"], timeout=10)
    await wait_status(client, waiting["run_id"], "waiting")

    completed = (await client.list(status="completed"))["runs"]
    assert {r["run_id"] for r in completed} == {r["run_id"] for r in ok}
    failed = (await client.list(status="failed"))["runs"]
    assert [r["run_id"] for r in failed] == [bad["run_id"]]
    assert [r["run_id"] for r in (await client.list(status="waiting"))["runs"]] == [
        waiting["run_id"]
    ]
    by_wf = (await client.list(workflow_id="e2e-echo"))["runs"]
    assert len(by_wf) == 3
    assert all(r["workflow_id"] == "e2e-echo" for r in by_wf)
    assert len((await client.list(limit=2))["runs"]) == 2
    assert len((await client.list())["runs"]) == 5
    await client.cancel(waiting["run_id"])


async def test_wait_with_timeout_on_a_waiting_run_returns_the_current_record(
    client: Client,
) -> None:
    run = await client.submit("e2e-signal", {})
    await wait_status(client, run["run_id"], "waiting")
    current = await client.wait(run["run_id"], timeout="100ms")
    assert current["status"] == "waiting"
    assert current["run_id"] == run["run_id"]
    await client.cancel(run["run_id"])


async def test_failed_run_records_the_error(client: Client) -> None:
    run = await client.submit("e2e-fail", {})
    done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "E2E_BOOM"
    assert "it broke" in done["error"]["message"]
    [step] = (await client.get(run["run_id"]))["steps"]
    assert step["status"] == "failed"
    assert step["error"]["code"] == "E2E_BOOM"


# --- cancel ---------------------------------------------------------------------------------


async def test_cancel_a_run_mid_step(client: Client, tmp_path: Path) -> None:
    """The in-flight step is cancelled, the run ends cancelled and compensations ran."""
    marker = tmp_path / "slow.started"
    run = await client.submit("e2e-slow", {"marker": str(marker)})
    await asyncio.to_thread(wait_file, marker)
    cancelled = await client.cancel(run["run_id"], reason="test")
    assert cancelled["status"] == "cancelled"
    got = await client.get(run["run_id"])
    assert [c["step_id"] for c in got["compensations"]] == ["reserve"]
    assert "slow" not in {s["step_id"] for s in got["steps"] if s["status"] == "completed"}


@pytest.mark.parametrize("compensate", [True, False])
async def test_cancel_a_waiting_run_runs_compensations_unless_told_not_to(
    client: Client, compensate: bool
) -> None:
    run = await client.submit("e2e-reserve-wait", {})
    await wait_status(client, run["run_id"], "waiting")
    cancelled = await client.cancel(run["run_id"], compensate=compensate, reason="test")
    assert cancelled["status"] == "cancelled"
    got = await client.get(run["run_id"])
    assert got["status"] == "cancelled"
    assert [c["step_id"] for c in got["compensations"]] == (["reserve"] if compensate else [])


async def test_cancel_a_terminal_run_is_refused_with_its_status(client: Client) -> None:
    run = await client.submit("e2e-echo", {})
    await client.wait(run["run_id"], timeout=10)
    with pytest.raises(RemoteError) as err:
        await client.cancel(run["run_id"])
    assert err.value.code == "RUN_NOT_ACTIVE"
    assert err.value.data["status"] == "completed"


# --- events ---------------------------------------------------------------------------------


async def test_send_event_broadcasts_to_every_matching_waiting_run(client: Client) -> None:
    inputs = [
        {"type": "order.paid", "match": {"order": 1}},
        {"type": "order.paid", "match": {"order": 1}},
        {"type": "order.paid"},
        {"type": "order.paid", "match": {"order": 2}},
    ]
    runs = [await client.submit("e2e-event", i) for i in inputs]
    for r in runs:
        await wait_status(client, r["run_id"], "waiting")
    result = await client.send_event("order.paid", {"order": 1, "amount": 5}, event_id="ev-1")
    assert result == {"event_id": "ev-1", "resolved": 3, "started": [], "cancelled": 0}
    for r in runs[:3]:
        done = await client.wait(r["run_id"], timeout=10)
        assert done["status"] == "completed"
        assert done["output"] == {"payload": {"order": 1, "amount": 5}}
    assert (await client.get(runs[3]["run_id"]))["status"] == "waiting"
    await client.cancel(runs[3]["run_id"])


async def test_resending_an_event_id_is_a_no_op(client: Client) -> None:
    first = await client.submit("e2e-event", {"type": "dup"})
    await wait_status(client, first["run_id"], "waiting")
    assert (await client.send_event("dup", {"v": 1}, event_id="same"))["resolved"] == 1
    await client.wait(first["run_id"], timeout=10)
    second = await client.submit("e2e-event", {"type": "dup"})
    await wait_status(client, second["run_id"], "waiting")
    again = await client.send_event("dup", {"v": 2}, event_id="same")
    assert again == {"event_id": "same", "resolved": 0, "started": [], "cancelled": 0}
    assert (await client.get(second["run_id"]))["status"] == "waiting"
    assert (await client.get(first["run_id"]))["output"] == {"payload": {"v": 1}}
    await client.cancel(second["run_id"])


async def test_event_sent_before_the_wait_resolves_it_within_the_lookback(
    client: Client,
) -> None:
    await client.send_event("early", {"x": 1})
    run = await client.submit("e2e-event", {"type": "early", "lookback": "1m"})
    done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "completed"
    assert done["output"] == {"payload": {"x": 1}}


async def test_event_sent_before_the_wait_is_ignored_without_lookback(client: Client) -> None:
    await client.send_event("early2", {"x": 1})
    run = await client.submit("e2e-event", {"type": "early2"})
    await wait_status(client, run["run_id"], "waiting")
    await client.cancel(run["run_id"])


# --- signals --------------------------------------------------------------------------------


async def test_signal_to_a_waiting_run_is_delivered(client: Client) -> None:
    run = await client.submit("e2e-signal", {})
    await wait_status(client, run["run_id"], "waiting")
    assert await client.signal(run["run_id"], "go", {"v": 1}) == {"delivered": True}
    done = await client.wait(run["run_id"], timeout=10)
    assert done["output"] == {"payload": {"v": 1}}


async def test_signal_before_the_wait_goes_to_the_inbox_and_is_consumed(client: Client) -> None:
    later = await client.submit("e2e-signal", {}, delay="1s")  # not waiting for "go" yet
    assert await client.signal(later["run_id"], "go", {"early": True}) == {"delivered": False}
    assert (await client.stats())["inbox_signals"] == 1
    done = await client.wait(later["run_id"], timeout=10)
    assert done["status"] == "completed"
    assert done["output"] == {"payload": {"early": True}}
    assert (await client.stats())["inbox_signals"] == 0


async def test_signal_to_an_unknown_run_is_not_found(client: Client) -> None:
    with pytest.raises(RemoteError) as err:
        await client.signal("no-such-run", "go", 1)
    assert err.value.code == "NOT_FOUND"
    assert err.value.data == {"run_id": "no-such-run"}


async def test_signal_to_a_terminal_run_is_refused(client: Client) -> None:
    run = await client.submit("e2e-echo", {})
    await client.wait(run["run_id"], timeout=10)
    with pytest.raises(RemoteError) as err:
        await client.signal(run["run_id"], "go", 1)
    assert err.value.code == "RUN_NOT_ACTIVE"
    assert err.value.data["status"] == "completed"


# --- tokens ---------------------------------------------------------------------------------


async def test_complete_token_resolves_it_once(client: Client) -> None:
    run = await client.submit("e2e-token", {})
    got = await wait_status(client, run["run_id"], "waiting")
    token = got["metadata"]["token"]
    assert await client.complete_token(token, {"ok": True}) == {"run_id": run["run_id"]}
    done = await client.wait(run["run_id"], timeout=10)
    assert done["output"] == {"payload": {"ok": True}}
    with pytest.raises(RemoteError) as err:
        await client.complete_token(token, {"ok": False})
    assert err.value.code == "TOKEN_CONFLICT"
    assert (await client.get(run["run_id"]))["output"] == {"payload": {"ok": True}}


async def test_complete_unknown_token_is_not_found(client: Client) -> None:
    with pytest.raises(RemoteError) as err:
        await client.complete_token("tok_nope", 1)
    assert err.value.code == "NOT_FOUND"
    assert err.value.data == {"token_id": "tok_nope"}


# --- child runs -----------------------------------------------------------------------------


async def test_parent_resumes_with_the_child_output(client: Client) -> None:
    run = await client.submit("e2e-parent", {"child": "e2e-echo", "child_input": {"c": 1}})
    done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "completed"
    assert done["output"] == {"child_output": {"echo": {"c": 1}}}
    children = [
        r for r in (await client.list(workflow_id="e2e-echo"))["runs"]
        if r["parent_run_id"] == run["run_id"]
    ]
    assert len(children) == 1
    assert children[0]["status"] == "completed"


async def test_failing_child_raises_child_run_error_in_the_parent(client: Client) -> None:
    run = await client.submit("e2e-parent", {"child": "e2e-fail"})
    done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "completed"
    assert done["output"]["child_error"] == "E2E_BOOM"
    assert "it broke" in done["output"]["message"]


async def test_cancelling_a_parent_cancels_its_child(client: Client) -> None:
    run = await client.submit("e2e-parent", {"child": "e2e-signal"})
    await wait_status(client, run["run_id"], "waiting")

    async def child() -> dict[str, Any] | None:
        runs = (await client.list(workflow_id="e2e-signal"))["runs"]
        return next((r for r in runs if r["status"] == "waiting"), None)

    kid = await wait_until(child, what="child waiting")
    assert kid["parent_run_id"] == run["run_id"]
    assert (await client.cancel(run["run_id"]))["status"] == "cancelled"
    done = await client.wait(kid["run_id"], timeout=10)
    assert done["status"] == "cancelled"


# --- introspection --------------------------------------------------------------------------


async def test_workflows_lists_the_loaded_modules(client: Client) -> None:
    wfs = {w["id"]: w for w in (await client.workflows())["workflows"]}
    assert {"e2e-echo", "e2e-fail", "e2e-signal", "e2e-parent"} <= set(wfs)
    assert wfs["e2e-echo"]["description"] == "One step that echoes the input."
    assert wfs["e2e-echo"]["version"]


async def test_stats_counts_runs_by_status(client: Client) -> None:
    run = await client.submit("e2e-echo", {})
    await client.wait(run["run_id"], timeout=10)
    waiting = await client.submit("e2e-signal", {})
    await wait_status(client, waiting["run_id"], "waiting")
    stats = await client.stats()
    assert stats["runs"]["completed"] == 1
    assert stats["runs"]["waiting"] == 1
    assert stats["waiting_waitpoints"] == 1
    assert isinstance(stats["actors"], dict)
    assert isinstance(stats["scheduler"], dict)
    await client.cancel(waiting["run_id"])


# --- streaming methods ----------------------------------------------------------------------


async def test_tail_receives_run_events_live(client: Client, daemon: Daemon) -> None:
    async with daemon.client() as other:
        task, queue = await start_stream(client, client.tail())
        run = await client.submit("e2e-echo", {}, run_id="e2e-tailed")
        await other.wait(run["run_id"], timeout=10)
        seen: list[str] = []
        while "run.completed" not in seen:
            record = await next_item(queue)
            if record.get("run_id") == "e2e-tailed":
                seen.append(record["event"])
        await stop_task(task)
    assert seen[0] == "run.submitted"
    assert {"run.started", "step.completed", "run.completed"} <= set(seen)


async def test_tail_filters_by_run_id(client: Client) -> None:
    task, queue = await start_stream(client, client.tail(run_id="e2e-wanted"))
    await client.submit("e2e-echo", {}, run_id="e2e-other")
    await client.wait("e2e-other", timeout=10)
    await client.submit("e2e-echo", {}, run_id="e2e-wanted")
    records: list[dict[str, Any]] = []
    while not records or records[-1]["event"] != "run.completed":
        records.append(await next_item(queue))
    await stop_task(task)
    assert {r.get("run_id") for r in records} == {"e2e-wanted"}


async def test_tail_filters_by_level(client: Client) -> None:
    task, queue = await start_stream(client, client.tail(run_id="e2e-lvl", level="info"))
    await client.submit("e2e-echo", {}, run_id="e2e-lvl")
    records: list[dict[str, Any]] = []
    while not records or records[-1]["event"] != "run.completed":
        records.append(await next_item(queue))
    await stop_task(task)
    assert all(r["level"] != "debug" for r in records)
    assert "step.completed" not in {r["event"] for r in records}  # logged at debug


async def test_watch_yields_state_changes_and_ends_at_terminal(client: Client) -> None:
    run = await client.submit("e2e-signal", {})
    await wait_status(client, run["run_id"], "waiting")
    changes: list[dict[str, Any]] = []

    async def consume() -> None:
        async for change in client.watch(run["run_id"]):
            changes.append(change)

    task = asyncio.create_task(consume())
    await wait_until(lambda: changes, what="first watch record")
    assert changes[0]["status"] == "waiting"
    await client.signal(run["run_id"], "go", 1)
    await asyncio.wait_for(task, 10)
    assert changes[-1]["status"] == "completed"
    assert all(c["status"] not in TERMINAL for c in changes[:-1])


async def test_stream_returns_recorded_chunks(client: Client) -> None:
    run = await client.submit("e2e-stream", {})
    done = await client.wait(run["run_id"], timeout=10)
    assert done["output"] == "hello stream world"
    chunks = [c async for c in client.stream(run["run_id"], "out")]
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3]
    assert "".join(c["chunk"] for c in chunks if not c["final"]) == "hello stream world"
    assert chunks[-1]["final"] is True
    assert {c["encoding"] for c in chunks} == {"text"}
    assert {"stream_id", "seq", "encoding", "chunk", "final", "at"} <= chunks[0].keys()


async def test_stream_follow_delivers_live_chunks(client: Client, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run = await client.submit("e2e-stream", {"gate": str(gate)})
    chunks: list[dict[str, Any]] = []

    async def consume() -> None:
        async for c in client.stream(run["run_id"], "out", follow=True):
            chunks.append(c)

    task = asyncio.create_task(consume())
    await wait_until(lambda: len(chunks) >= 2, what="first two chunks")
    assert (await client.get(run["run_id"]))["status"] == "running"
    gate.write_text("open")
    await asyncio.wait_for(task, 10)
    assert [c["chunk"] for c in chunks] == ["hello ", "stream ", "world", None]
    assert chunks[-1]["final"] is True
    assert (await client.wait(run["run_id"], timeout=10))["status"] == "completed"


async def test_streaming_iterator_closed_early_leaves_the_connection_usable(
    client: Client,
) -> None:
    task, queue = await start_stream(client, client.tail())
    await client.submit("e2e-echo", {})
    assert await next_item(queue)
    await stop_task(task)  # closes the iterator: the client sends $cancel
    assert (await client.stats())["runs"]
