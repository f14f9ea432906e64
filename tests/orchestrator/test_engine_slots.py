"""Active-run slots: past ``max_active_runs`` new runs wait ``pending`` (as queue entries, not
tasks) and take freed slots by priority, then age."""

from __future__ import annotations

import pytest

from orchestrator.engine.engine import Engine
from orchestrator.engine.settings import Settings
from tests.orchestrator import engine_workflows
from tests.orchestrator.conftest import GRACE


@pytest.mark.parametrize("settings", [Settings(max_active_runs=1, shutdown_grace=GRACE)])
async def test_runs_past_the_slot_limit_wait_pending_and_start_by_priority_then_age(
    engine: Engine,
) -> None:
    await engine.submit("slow", None, run_id="holder")
    await engine_workflows.gate("holder").started.wait()
    for run_id, priority in (("low", 1), ("high", 5), ("mid-1", 3), ("mid-2", 3)):
        await engine.submit("ordered", None, run_id=run_id, priority=priority)
    for run_id in ("low", "high", "mid-1", "mid-2"):
        assert (await engine.get(run_id))["status"] == "pending"
    actors = (await engine.stats())["actors"]
    assert (actors["active_actors"], actors["runs_queued"], actors["slots_free"]) == (1, 4, 0)

    engine_workflows.gate("holder").release.set()
    for run_id in ("low", "high", "mid-1", "mid-2"):
        assert (await engine.wait(run_id, timeout=5))["status"] == "completed"
    assert engine_workflows.STARTED_ORDER == ["high", "mid-1", "mid-2", "low"]
    assert (await engine.stats())["actors"]["slots_free"] == 1


@pytest.mark.parametrize("settings", [Settings(max_active_runs=1, shutdown_grace=GRACE)])
async def test_a_parked_run_gives_its_slot_back(engine: Engine) -> None:
    await engine.submit("signal", None, run_id="parked")
    await engine.submit("echo", 1, run_id="next")
    assert (await engine.wait("next", timeout=5))["status"] == "completed"
    assert (await engine.get("parked"))["status"] == "waiting"
