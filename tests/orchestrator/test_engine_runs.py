"""The engine in process over a real SQLite file: a run's life from submit to its end."""

from __future__ import annotations

import pytest

from orchestrator.api import errors
from orchestrator.engine.engine import Engine
from tests.orchestrator import engine_workflows
from tests.orchestrator.conftest import reach

pytestmark = pytest.mark.both_backends  # the engine smoke on PostgreSQL too


async def test_submitted_run_is_committed_pending_then_completes_with_its_output(
    engine: Engine,
) -> None:
    run = await engine.submit("echo", {"a": 1}, run_id="r")
    assert (run["run_id"], run["status"]) == ("r", "pending")
    done = await engine.wait("r")
    assert done["status"] == "completed"
    assert done["output"] == {"echo": {"a": 1}}
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    detail = await engine.get("r")
    assert [(s["step_id"], s["status"], s["attempt"]) for s in detail["steps"]] == [
        ("fetch", "completed", 1)
    ]
    assert detail["metadata"] == {"progress": 50}


async def test_submit_with_the_same_idempotency_key_returns_the_first_run(
    engine: Engine,
) -> None:
    first = await engine.submit("echo", 1, idempotency_key="k")
    second = await engine.submit("echo", 2, idempotency_key="k")
    assert second["run_id"] == first["run_id"]
    assert (await engine.wait(first["run_id"]))["output"] == {"echo": 1}
    assert len((await engine.list(workflow_id="echo"))["runs"]) == 1


async def test_submit_of_an_unknown_workflow_or_rejected_input_commits_nothing(
    engine: Engine,
) -> None:
    with pytest.raises(errors.NotFound):
        await engine.submit("nope", None)
    with pytest.raises(errors.ValidationFailed) as info:
        await engine.submit("strict", {"y": 1})
    assert info.value.code == "VALIDATION"
    assert (await engine.list())["runs"] == []


async def test_failing_step_ends_the_run_failed_with_the_step_error(engine: Engine) -> None:
    await engine.submit("fail", None, run_id="f")
    done = await engine.wait("f")
    assert done["status"] == "failed"
    assert (done["error"]["code"], done["error"]["message"]) == ("FATAL", "it broke")
    (step,) = (await engine.get("f"))["steps"]
    assert (step["step_id"], step["status"]) == ("boom", "failed")


async def test_wait_with_timeout_returns_the_current_record_of_a_run_still_waiting(
    engine: Engine,
) -> None:
    await engine.submit("signal", None, run_id="s")
    await reach(engine, "s", "waiting")
    assert (await engine.wait("s", timeout=0.05))["status"] == "waiting"
    await engine.signal("s", "finish", "x")
    assert (await engine.wait("s", timeout=5))["status"] == "completed"


async def test_wait_on_an_unknown_run_is_not_found(engine: Engine) -> None:
    with pytest.raises(errors.NotFound):
        await engine.wait("nope", timeout=0.01)


async def test_cancel_of_a_parked_run_runs_its_compensations(engine: Engine) -> None:
    await engine.submit("reserve-wait", None, run_id="rw")
    await reach(engine, "rw", "waiting")
    cancelled = await engine.cancel("rw", reason="changed my mind")
    assert cancelled["status"] == "cancelled"
    assert (cancelled["error"]["code"], cancelled["error"]["message"]) == (
        "CANCELLED", "changed my mind"
    )
    assert engine_workflows.COMPENSATED == ["rw"]
    compensations = (await engine.get("rw"))["compensations"]
    assert [(c["step_id"], c["status"]) for c in compensations] == [("reserve", "completed")]


async def test_cancel_without_compensation_runs_none(engine: Engine) -> None:
    await engine.submit("reserve-wait", None, run_id="rw")
    await reach(engine, "rw", "waiting")
    assert (await engine.cancel("rw", compensate=False))["status"] == "cancelled"
    assert engine_workflows.COMPENSATED == []
    assert (await engine.get("rw"))["compensations"] == []


async def test_cancel_reaches_a_step_in_flight(engine: Engine) -> None:
    await engine.submit("slow", None, run_id="s")
    await engine_workflows.gate("s").started.wait()
    cancelled = await engine.cancel("s")
    assert cancelled["status"] == "cancelled"
    assert engine_workflows.COMPENSATED == ["s"]  # the step before it is compensated


async def test_cancel_of_an_ended_run_is_refused(engine: Engine) -> None:
    await engine.submit("echo", None, run_id="e")
    await engine.wait("e")
    with pytest.raises(errors.RunNotActive) as info:
        await engine.cancel("e")
    assert info.value.data["status"] == "completed"


async def test_child_run_output_returns_to_the_invoking_parent(engine: Engine) -> None:
    await engine.submit("parent", {"child": "echo", "child_input": 7}, run_id="p")
    done = await engine.wait("p")
    assert done["output"] == {"child_output": {"echo": 7}}
    (child,) = [r for r in (await engine.list())["runs"] if r["parent_run_id"] == "p"]
    assert (child["workflow_id"], child["status"]) == ("echo", "completed")
    assert child["root_run_id"] == "p"
    assert child["triggered_by"] == "invoke"


async def test_failed_child_raises_child_run_error_in_the_parent(engine: Engine) -> None:
    await engine.submit("parent", {"child": "fail"}, run_id="p")
    done = await engine.wait("p")
    assert done["status"] == "completed"
    assert done["output"] == {"child_error": "FATAL"}


async def test_cancelled_run_leaves_no_waitpoint_for_a_later_event_to_resolve(
    engine: Engine,
) -> None:
    await engine.submit("event", {"type": "go"}, run_id="e")
    await reach(engine, "e", "waiting")
    await engine.cancel("e")
    assert (await engine.stats())["waiting_waitpoints"] == 0
    assert (await engine.send_event("go", 1))["resolved"] == 0
