"""``replay``: a completed run's body, re-run against its journal, follows it exactly; the run
facts it sees (tags, parent, attempt, number, triggered_by) are the ones its live run saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.engine.engine import Engine
from runtime import Context, FatalError, OnEvent
from runtime.workflow import WorkflowDefinition
from tests.orchestrator import engine_workflows
from tests.orchestrator.conftest import open_engine

FOLLOWED = {"diverged": False, "detail": [], "reached": "completed",
            "recorded_status": "completed"}


async def test_replay_of_a_completed_run_reports_no_divergence(engine: Engine) -> None:
    await engine.submit("echo", {"a": 1}, run_id="r")
    await engine.wait("r")
    assert await engine.replay("r") == FOLLOWED


async def test_replay_of_a_tagged_run_takes_the_branch_its_tags_chose(engine: Engine) -> None:
    """Replay once built the run facts without tags: a body branching on them diverged."""
    await engine.submit("vip", None, run_id="vip", tags=["vip"])
    await engine.submit("vip", None, run_id="plain")
    assert (await engine.wait("vip"))["output"] == "fast"
    assert (await engine.wait("plain"))["output"] == "normal"
    assert [s["step_id"] for s in (await engine.get("vip"))["steps"]] == ["priority-lane"]
    assert await engine.replay("vip") == FOLLOWED
    assert await engine.replay("plain") == FOLLOWED


async def test_replay_of_a_child_run_and_of_its_parent_reports_no_divergence(
    engine: Engine,
) -> None:
    await engine.submit("parent", {"child": "vip"}, run_id="p")
    assert (await engine.wait("p"))["output"] == {"child_output": "normal"}
    (child,) = [r for r in (await engine.list())["runs"] if r["parent_run_id"] == "p"]
    assert await engine.replay(child["run_id"]) == FOLLOWED
    assert await engine.replay("p") == FOLLOWED


async def _always_normal(input: Any, ctx: Context) -> str:
    lane: str = await ctx.step("normal-lane", lambda: "normal")
    return lane


async def test_replay_reports_divergence_when_the_body_no_longer_follows_the_journal(
    db_path: Path,
) -> None:
    async with open_engine(db_path) as first:
        await first.submit("vip", None, run_id="vip", tags=["vip"])
        await first.wait("vip")
    changed = engine_workflows.registry()
    changed.unregister("vip")
    changed.register(WorkflowDefinition(id="vip", fn=_always_normal, version="2"))
    async with open_engine(db_path, registry=changed) as second:
        report = await second.replay("vip")
    assert report["diverged"] is True
    assert report["detail"]


async def _by_facts(input: Any, ctx: Context) -> list[str]:
    # Each step's id comes from a run fact: a replay that saw another fact would record
    # another step id there and diverge.
    taken = [f"attempt-{ctx.run.attempt}", f"by-{ctx.run.triggered_by}",
             f"number-{ctx.run.number}"]
    for step_id in taken:
        await ctx.step(step_id, str.upper, step_id)
    if ctx.run.attempt == 1 and input.get("fail_first"):
        raise FatalError("the first attempt fails")
    return taken


async def test_replay_sees_the_attempt_number_and_trigger_of_the_live_run(db_path: Path) -> None:
    """``RunRecord → RunFacts`` is one function for the actor and replay: a retried attempt,
    an event-triggered run and a later run number replay without divergence."""
    registry = engine_workflows.registry()
    registry.register(WorkflowDefinition(id="facts", fn=_by_facts, version="1",
                                         on_event=(OnEvent("facts.go"),)))
    async with open_engine(db_path, registry=registry) as engine:
        sent = await engine.send_event("facts.go", {"fail_first": True})
        (by_event,) = sent["started"]
        assert (await engine.wait(by_event, timeout=10))["status"] == "failed"
        await engine.retry(by_event, mode="retrigger")
        done = await engine.wait(by_event, timeout=10)
        assert done["status"] == "completed"
        assert done["output"][:2] == ["attempt-2", "by-event"]
        await engine.submit("facts", {}, run_id="by-api")
        later = await engine.wait("by-api", timeout=10)
        assert later["output"][:2] == ["attempt-1", "by-api"]
        assert later["output"][2] != done["output"][2]  # another run number
        assert await engine.replay(by_event) == FOLLOWED
        assert await engine.replay("by-api") == FOLLOWED
