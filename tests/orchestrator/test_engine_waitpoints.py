"""Parking and resuming: a run waits on the outside world holding no task (unless kept warm),
and resumes, warm or cold from its journal, when the waitpoint resolves."""

from __future__ import annotations

import pytest

from orchestrator.engine.engine import Engine
from orchestrator.engine.settings import Settings
from tests.orchestrator import engine_workflows
from tests.orchestrator.conftest import GRACE, reach

pytestmark = pytest.mark.both_backends  # the engine smoke on PostgreSQL too


async def test_parked_run_resumes_warm_when_its_event_arrives(engine: Engine) -> None:
    await engine.submit("event", {"type": "paid"}, run_id="e")
    await reach(engine, "e", "waiting")
    stats = (await engine.stats())["actors"]
    assert (stats["active_actors"], stats["warm_runs"]) == (0, 1)
    assert (await engine.send_event("paid", {"amount": 3}))["resolved"] == 1
    done = await engine.wait("e")
    assert (done["status"], done["output"]) == ("completed", {"amount": 3})
    assert engine_workflows.BODY_ENTRIES["e"] == 1  # the suspended body went on


@pytest.mark.parametrize("settings", [Settings(warm_runs=0, shutdown_grace=GRACE)])
async def test_parked_run_resumes_cold_from_its_journal_when_none_is_kept_warm(
    engine: Engine,
) -> None:
    await engine.submit("event", {"type": "paid"}, run_id="e")
    await reach(engine, "e", "waiting")
    assert (await engine.stats())["actors"]["warm_runs"] == 0
    assert (await engine.send_event("paid", {"amount": 3}))["resolved"] == 1
    done = await engine.wait("e")
    assert (done["status"], done["output"]) == ("completed", {"amount": 3})
    assert engine_workflows.BODY_ENTRIES["e"] == 2  # replayed from the top


async def test_event_resolves_only_waitpoints_of_its_type(engine: Engine) -> None:
    await engine.submit("event", {"type": "a"}, run_id="a")
    await engine.submit("event", {"type": "b"}, run_id="b")
    await reach(engine, "a", "waiting")
    await reach(engine, "b", "waiting")
    assert (await engine.send_event("b", 1, event_id="e1"))["resolved"] == 1
    assert (await engine.wait("b"))["output"] == 1
    assert (await engine.wait("a", timeout=0.01))["status"] == "waiting"
    assert (await engine.send_event("b", 2, event_id="e1"))["resolved"] == 0  # a re-send


async def test_signal_sent_before_the_run_waits_is_kept_in_its_inbox(engine: Engine) -> None:
    await engine.submit("signal", None, run_id="s")
    sent = await engine.signal("s", "finish", "early")
    done = await engine.wait("s")
    assert (done["status"], done["output"]) == ("completed", "early")
    assert isinstance(sent["delivered"], bool)  # either way, the run got it


async def test_completed_token_resumes_its_run_once(engine: Engine) -> None:
    await engine.submit("token", None, run_id="t")
    await reach(engine, "t", "waiting")
    token = (await engine.get("t"))["metadata"]["token"]
    assert await engine.complete_token(token, {"ok": 1}) == {"run_id": "t"}
    assert (await engine.wait("t"))["output"] == {"ok": 1}
