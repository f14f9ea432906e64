"""The timer facility: durable sleeps and delayed starts fire at their due time, never before."""

from __future__ import annotations

from orchestrator.engine.engine import Engine
from tests.orchestrator.conftest import reach


async def test_sleep_parks_the_run_until_its_timer_fires(engine: Engine) -> None:
    await engine.submit("sleep", {"seconds": 0.1}, run_id="s")
    parked = await reach(engine, "s", "waiting")
    assert parked["finished_at"] is None
    (wp,) = (await engine.get("s"))["waitpoints"]
    assert (wp["waitpoint_id"], wp["kind"], wp["status"]) == ("sleep:0", "DATETIME", "waiting")
    assert wp["due_at"] == wp["registered_at"] + 0.1
    done = await engine.wait("s", timeout=5)
    assert (done["status"], done["output"]) == ("completed", "woke")
    (wp,) = (await engine.get("s"))["waitpoints"]
    assert wp["status"] == "resolved"
    assert wp["resolved_at"] >= wp["due_at"]
    stats = await engine.stats()
    assert stats["timers"] == 0
    # The timer task's lag totals (the health page's chart): claimed at or after the due time.
    scheduler = stats["scheduler"]
    assert scheduler["timers_fired"] == 1
    assert 0 <= scheduler["lag_total"] == scheduler["lag_max"] < 5


async def test_delayed_submit_stays_pending_and_starts_on_time(engine: Engine) -> None:
    run = await engine.submit("echo", 1, run_id="d", delay=0.1)
    assert run["status"] == "pending"
    assert run["scheduled_at"] == run["created_at"] + 0.1
    assert (await engine.wait("d", timeout=0.01))["status"] == "pending"
    done = await engine.wait("d", timeout=5)
    assert done["status"] == "completed"
    assert done["started_at"] >= run["scheduled_at"]
