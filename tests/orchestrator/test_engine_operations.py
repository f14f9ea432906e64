"""Run operations on the embedded engine over a real SQLite file (SPEC §6): durable cancel,
pause and resume of a run and of a workflow, retry (resume and retrigger), bulk, the change
feed, and the errors they answer with.

A run caught mid-step waits at its :class:`~tests.orchestrator.engine_workflows.Gate`; a run
caught parked waits for a signal. "A daemon life" is one :func:`open_engine` block on the same
file; closing it is a shutdown, and a crash is simulated by committing what an acknowledged
operation commits and then opening the next life.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import storage
from orchestrator.api import errors
from orchestrator.engine.engine import Engine
from orchestrator.engine.settings import Settings
from tests.orchestrator import engine_workflows as ew
from tests.orchestrator.conftest import GRACE, open_engine, reach, until

REACH_TIMEOUT = 5.0


async def reached(engine: Engine, run_id: str, *statuses: str) -> dict[str, Any]:
    """The run's record once its status is one of ``statuses`` (a child run once it exists,
    too); fails after 5 s."""

    async def exists() -> bool:
        return await engine.storage.get_run(run_id) is not None

    await until(exists, f"run {run_id} to exist", REACH_TIMEOUT)
    try:
        return await asyncio.wait_for(reach(engine, run_id, *statuses), REACH_TIMEOUT)
    except TimeoutError:
        got = (await engine.get(run_id))["status"]
        pytest.fail(f"run {run_id} is {got}, never reached {statuses}")


async def ended(engine: Engine, run_id: str) -> dict[str, Any]:
    return await engine.wait(run_id, timeout=REACH_TIMEOUT)


async def status(engine: Engine, run_id: str) -> str:
    got: str = (await engine.get(run_id))["status"]
    return got


async def expect(code: str, call: Any) -> errors.ServiceError:
    with pytest.raises(errors.ServiceError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


def settings(*, warm: bool = True) -> Settings:
    return Settings(shutdown_grace=GRACE, warm_runs=10 if warm else 0)


@contextlib.asynccontextmanager
async def life(db_path: Path, *, warm: bool = True) -> AsyncIterator[Engine]:
    async with open_engine(db_path, settings(warm=warm)) as engine:
        yield engine


# --- cancel -----------------------------------------------------------------------------------


async def test_cancel_of_a_delayed_or_paused_pending_run_ends_it_without_starting(
    engine: Engine,
) -> None:
    await engine.submit("echo", 1, run_id="later", delay="1h")
    await engine.submit("echo", 2, run_id="held", delay="1h")
    await engine.pause("held")
    for run_id in ("later", "held"):
        done = await engine.cancel(run_id, reason="not needed")
        assert (done["status"], done["started_at"]) == ("cancelled", None)
        assert done["error"]["message"] == "not needed"
        assert done["paused"] is False


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
@pytest.mark.parametrize("compensate", [True, False])
async def test_cancel_of_a_parked_run_compensates_unless_told_not_to(
    db_path: Path, warm: bool, compensate: bool
) -> None:
    async with life(db_path, warm=warm) as engine:
        await engine.submit("reserve-wait", None, run_id="rw")
        await reached(engine, "rw", "waiting")
        done = await engine.cancel("rw", compensate=compensate)
        assert done["status"] == "cancelled"
        detail = await engine.get("rw")
        assert detail["cancel_requested"]["compensate"] is compensate
        comps = detail["compensations"]
    assert [c["step_id"] for c in comps] == (["reserve"] if compensate else [])
    assert (["rw"] if compensate else []) == ew.COMPENSATED


async def test_cancel_of_a_running_step_stops_it_and_compensates(engine: Engine) -> None:
    await engine.submit("slow", None, run_id="s")
    await asyncio.wait_for(ew.gate("s").started.wait(), REACH_TIMEOUT)
    done = await engine.cancel("s")
    assert done["status"] == "cancelled"
    assert ew.COMPENSATED == ["s"]
    assert [s["step_id"] for s in (await engine.get("s"))["steps"]] == ["reserve"]


async def test_cancel_of_a_paused_run_still_runs_its_compensations(engine: Engine) -> None:
    await engine.submit("reserve-wait", None, run_id="rw")
    await reached(engine, "rw", "waiting")
    assert (await engine.pause("rw"))["status"] == "paused"
    assert (await engine.cancel("rw"))["status"] == "cancelled"
    assert ew.COMPENSATED == ["rw"]


async def test_cancel_of_a_parent_cancels_its_children_and_theirs(engine: Engine) -> None:
    chain = {"child": "parent", "child_input": {"child": "reserve-wait"}}
    await engine.submit("parent", chain, run_id="P")
    grandchild = "P-parent-0-reserve-wait-0"
    await reached(engine, grandchild, "waiting")
    assert (await engine.cancel("P"))["status"] == "cancelled"
    for run_id in ("P-parent-0", grandchild):
        done = await ended(engine, run_id)
        assert done["status"] == "cancelled", run_id
        assert done["error"]["message"].startswith("parent run")
    assert [grandchild] == ew.COMPENSATED


async def test_cancel_of_a_child_that_never_started_resumes_its_parent(engine: Engine) -> None:
    await engine.pause(workflow_id="echo")
    await engine.submit("parent", {"child": "echo"}, run_id="P")
    child = "P-echo-0"
    assert (await reached(engine, child, "pending"))["started_at"] is None
    assert (await engine.cancel(child))["status"] == "cancelled"
    done = await ended(engine, "P")
    assert (done["status"], done["output"]) == ("completed", {"child_error": "CANCELLED"})


async def test_cancel_of_an_ended_run_is_run_not_active_with_its_status(engine: Engine) -> None:
    await engine.submit("echo", 1, run_id="done")
    await ended(engine, "done")
    err = await expect("RUN_NOT_ACTIVE", engine.cancel("done"))
    assert err.data["status"] == "completed"
    await expect("NOT_FOUND", engine.cancel("nope"))


async def test_acknowledged_cancel_is_carried_out_after_a_crash(db_path: Path) -> None:
    """What the cancel commits before it answers is enough: the next life cancels the run
    (and a child whose cancel rode with its parent's end), compensating."""
    async with life(db_path, warm=False) as engine:
        await engine.submit("reserve-wait", None, run_id="rw")
        await engine.submit("parent", {"child": "reserve-wait"}, run_id="P")
        await reached(engine, "rw", "waiting")
        await reached(engine, "P-reserve-wait-0", "waiting")
    async with storage.SQLiteStorage.open(db_path) as store:  # the acknowledged writes only
        await store.execute(storage.RequestCancel("rw", 1.0, "ops", True))
        await store.commit([
            storage.UpdateRun("P", at=1.0, status=storage.RunStatus.CANCELLED),
            storage.RequestChildCancels("P", 1.0, "parent run P was cancelled"),
        ])
    async with life(db_path) as engine:
        assert (await ended(engine, "rw"))["error"]["message"] == "ops"
        assert (await ended(engine, "P-reserve-wait-0"))["status"] == "cancelled"
    assert sorted(ew.COMPENSATED) == ["P-reserve-wait-0", "rw"]


# --- pause and resume a run ------------------------------------------------------------------


async def test_pause_lets_the_step_in_flight_finish_then_holds_the_run(engine: Engine) -> None:
    await engine.submit("hold-then-step", None, run_id="h")
    await asyncio.wait_for(ew.gate("h").started.wait(), REACH_TIMEOUT)
    pausing = asyncio.ensure_future(engine.pause("h"))
    await reach_paused_flag(engine, "h")
    ew.gate("h").release.set()
    assert (await pausing)["status"] == "paused"
    detail = await engine.get("h")
    assert [(s["step_id"], s["status"]) for s in detail["steps"]] == [("hold", "completed")]
    assert ew.CALLS["h:after"] == 0
    assert (await engine.resume("h"))["status"] in ("running", "completed")
    assert (await ended(engine, "h"))["status"] == "completed"
    assert ew.CALLS["h:after"] == 1


async def test_a_run_held_mid_body_stays_paused_through_a_shutdown(db_path: Path) -> None:
    async with life(db_path) as engine:
        await engine.submit("hold-then-step", None, run_id="h")
        await asyncio.wait_for(ew.gate("h").started.wait(), REACH_TIMEOUT)
        pausing = asyncio.ensure_future(engine.pause("h"))
        await reach_paused_flag(engine, "h")
        ew.gate("h").release.set()
        assert (await pausing)["status"] == "paused"  # held at the gate of 'after'
    async with life(db_path) as engine:
        assert await status(engine, "h") == "paused"
        await engine.resume("h")
        assert (await ended(engine, "h"))["output"] == "done"
        steps = (await engine.get("h"))["steps"]
    assert [(s["step_id"], s["attempt"]) for s in steps] == [("hold", 1), ("after", 1)]
    assert ew.CALLS["h:after"] == 1


async def reach_paused_flag(engine: Engine, run_id: str) -> None:
    for _ in range(500):
        if (await engine.get(run_id))["paused"]:
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"{run_id} was never flagged paused")


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_a_paused_parked_run_keeps_resolutions_for_the_resume(
    db_path: Path, warm: bool
) -> None:
    async with life(db_path, warm=warm) as engine:
        await engine.submit("wait-then-step", None, run_id="w")
        await reached(engine, "w", "waiting")
        assert (await engine.pause("w"))["status"] == "paused"
        assert await engine.signal("w", "go", 42) == {"delivered": True}  # recorded
        detail = await engine.get("w")
        assert detail["status"] == "paused"
        assert [w["status"] for w in detail["waitpoints"]] == ["resolved"]
        assert ew.CALLS["w:after"] == 0
        resumed = await engine.resume("w")
        assert (resumed["status"], resumed["paused"]) == ("waiting", False)
        done = await ended(engine, "w")
    assert (done["status"], done["output"]) == ("completed", 42)
    assert ew.CALLS["w:after"] == 1
    assert ew.BODY_ENTRIES["w"] == (1 if warm else 2)


async def test_a_paused_run_stays_paused_across_a_restart_and_resume_continues_it(
    db_path: Path,
) -> None:
    async with life(db_path) as engine:
        await engine.submit("wait-then-step", None, run_id="w")
        await reached(engine, "w", "waiting")
        await engine.pause("w")
        await engine.signal("w", "go", "while paused")
    async with life(db_path) as engine:
        assert await status(engine, "w") == "paused"
        assert ew.BODY_ENTRIES["w"] == 1  # recovery did not restart it
        await engine.resume("w")
        done = await ended(engine, "w")
    assert (done["status"], done["output"]) == ("completed", "while paused")


async def test_a_run_paused_mid_step_before_a_crash_is_held_again_after_recovery(
    db_path: Path,
) -> None:
    async with life(db_path) as engine:
        await engine.submit("slow", None, run_id="s")
        await asyncio.wait_for(ew.gate("s").started.wait(), REACH_TIMEOUT)
        await engine.pause("s")  # the step is still in flight: "running", flagged paused
    ew.reset()
    async with life(db_path) as engine:
        held = await reached(engine, "s", "paused")  # held where it stopped
        assert held["paused"] is True
        assert not ew.gate("s").started.is_set()  # the step did not run again
        await engine.resume("s")
        await asyncio.wait_for(ew.gate("s").started.wait(), REACH_TIMEOUT)
        ew.gate("s").release.set()
        assert (await ended(engine, "s"))["output"] == "released"


async def test_pause_of_a_pending_run_holds_it_pending_until_resume(engine: Engine) -> None:
    await engine.submit("echo", 1, run_id="e", delay="1h")
    paused = await engine.pause("e")
    assert (paused["status"], paused["paused"]) == ("pending", True)
    await engine.reschedule("e")  # due now, but paused
    detail = await engine.get("e")
    assert detail["status"] == "pending" and detail["pending"]["paused"] is True
    resumed = await engine.resume("e")
    assert resumed["paused"] is False
    assert (await ended(engine, "e"))["output"] == {"echo": 1}


async def test_resume_of_a_run_that_is_not_paused_is_run_not_active(engine: Engine) -> None:
    await engine.submit("signal", None, run_id="s")
    await reached(engine, "s", "waiting")
    err = await expect("RUN_NOT_ACTIVE", engine.resume("s"))
    assert err.data["status"] == "waiting"
    await engine.submit("echo", 1, run_id="later", delay="1h")
    await engine.resume("later")  # a delayed run starts now
    assert (await ended(engine, "later"))["status"] == "completed"
    err = await expect("RUN_NOT_ACTIVE", engine.pause("later"))
    assert err.data["status"] == "completed"


async def test_pause_and_resume_name_a_run_or_a_workflow(engine: Engine) -> None:
    err = await expect("INVALID_PARAMS", engine.pause())
    assert err.data["field"] == "run_id"
    err = await expect("INVALID_PARAMS", engine.resume("r", workflow_id="echo"))
    assert err.data["field"] == "workflow_id"
    await expect("NOT_FOUND", engine.pause("nope"))
    await expect("NOT_FOUND", engine.pause(workflow_id="nope"))


# --- pause a workflow -------------------------------------------------------------------------


async def test_a_paused_workflow_holds_new_runs_pending_while_running_ones_go_on(
    db_path: Path,
) -> None:
    async with life(db_path) as engine:
        await engine.submit("wait-then-step", None, run_id="running")
        await reached(engine, "running", "waiting")
        assert await engine.pause(workflow_id="wait-then-step") == {
            "workflow_id": "wait-then-step", "paused": True}
        await engine.submit("wait-then-step", None, run_id="new")
        assert (await engine.get("new"))["pending"] == {"paused_workflow": True}
        await engine.signal("running", "go", 1)
        assert (await ended(engine, "running"))["status"] == "completed"
    async with life(db_path) as engine:  # the pause is stored
        await engine.submit("wait-then-step", None, run_id="newer")
        for run_id in ("new", "newer"):
            assert (await engine.get(run_id))["pending"] == {"paused_workflow": True}
        assert ew.BODY_ENTRIES["new"] == ew.BODY_ENTRIES["newer"] == 0
        assert (await engine.stats())["operations"]["paused_workflows"] == ["wait-then-step"]
        assert await engine.resume(workflow_id="wait-then-step") == {
            "workflow_id": "wait-then-step", "paused": False}
        for run_id in ("new", "newer"):
            await reached(engine, run_id, "waiting")
            await engine.signal(run_id, "go", run_id)
            assert (await ended(engine, run_id))["output"] == run_id


async def test_a_paused_workflow_keeps_a_run_paused_on_its_own_after_the_workflow_resumes(
    engine: Engine,
) -> None:
    await engine.pause(workflow_id="echo")
    await engine.submit("echo", 1, run_id="a")
    await engine.submit("echo", 2, run_id="b")
    await engine.pause("b")
    await engine.resume(workflow_id="echo")
    assert (await ended(engine, "a"))["status"] == "completed"
    assert (await engine.get("b"))["pending"] == {"paused": True}
    await engine.resume("b")
    assert (await ended(engine, "b"))["status"] == "completed"


# --- retry ------------------------------------------------------------------------------------


async def test_retry_resume_keeps_completed_steps_and_runs_the_failed_one_again(
    engine: Engine,
) -> None:
    await engine.submit("flaky", None, run_id="f")
    failed = await ended(engine, "f")
    assert (failed["status"], failed["error"]["code"]) == ("failed", "FLAKY")
    ew.FIXED.add("f")
    again = await engine.retry("f")
    assert (again["attempt"], again["error"], again["finished_at"]) == (1, None, None)
    done = await ended(engine, "f")
    assert (done["status"], done["output"]) == ("completed", {"attempt": 1})
    assert ew.CALLS["f:first"] == 1  # kept, not run again
    steps = {s["step_id"]: s for s in (await engine.get("f"))["steps"]}
    assert steps["flaky"]["attempt"] == 2
    assert [a["status"] for a in steps["flaky"]["attempts"]] == ["failed", "completed"]
    previous = (await engine.get("f"))["previous_attempts"]
    assert [(p["mode"], p["status"]) for p in previous] == [("resume", "failed")]
    assert previous[0]["journal"]["failed_steps"][0]["step_id"] == "flaky"


async def test_retry_retrigger_starts_over_as_the_next_attempt(engine: Engine) -> None:
    await engine.submit("flaky", None, run_id="f")
    await ended(engine, "f")
    ew.FIXED.add("f")
    again = await engine.retry("f", mode="retrigger")
    assert (again["attempt"], again["started_at"]) == (2, None)
    done = await ended(engine, "f")
    assert done["output"] == {"attempt": 2}  # ctx.run.attempt
    assert ew.CALLS["f:first"] == 2  # from scratch
    detail = await engine.get("f")
    assert [s["attempt"] for s in detail["steps"]] == [1, 1]
    (previous,) = detail["previous_attempts"]
    assert (previous["attempt"], previous["mode"], previous["status"]) == (
        1, "retrigger", "failed")
    assert [s["step_id"] for s in previous["journal"]["steps"]] == ["first", "flaky"]


async def test_retry_resume_of_a_compensated_run_runs_its_undone_steps_again(
    engine: Engine,
) -> None:
    await engine.submit("saga", None, run_id="s")
    assert (await ended(engine, "s"))["status"] == "compensated"
    assert ew.COMPENSATED == ["s"]
    ew.FIXED.add("s")
    await engine.retry("s")
    done = await ended(engine, "s")
    assert (done["status"], done["output"]) == ("completed", "booked")
    assert ew.CALLS["s:reserve"] == 2  # its compensation undid it: reserved again
    detail = await engine.get("s")
    assert detail["compensations"] == []
    undone = detail["previous_attempts"][0]["journal"]["undone_steps"]
    assert [s["step_id"] for s in undone] == ["reserve"]


async def test_retry_resume_of_a_cancelled_parent_retries_its_cancelled_child(
    engine: Engine,
) -> None:
    await engine.submit("parent", {"child": "reserve-wait"}, run_id="P")
    child = "P-reserve-wait-0"
    await reached(engine, child, "waiting")
    await engine.cancel("P")
    assert (await ended(engine, child))["status"] == "cancelled"
    await engine.retry("P")
    await reached(engine, child, "waiting")
    await reached(engine, "P", "waiting")
    await engine.signal(child, "go", "again")
    done = await ended(engine, "P")
    assert (done["status"], done["output"]) == ("completed", {"child_output": "again"})


async def test_retry_retrigger_of_a_parent_invokes_a_new_child(engine: Engine) -> None:
    await engine.submit("parent", {"child": "reserve-wait"}, run_id="P")
    await reached(engine, "P-reserve-wait-0", "waiting")
    await engine.cancel("P")
    await engine.retry("P", mode="retrigger")
    fresh = "P-reserve-wait-0@2"
    await reached(engine, fresh, "waiting")
    await engine.signal(fresh, "go", 2)
    assert (await ended(engine, "P"))["output"] == {"child_output": 2}
    assert await status(engine, "P-reserve-wait-0") == "cancelled"


async def test_retry_of_a_run_that_did_not_end_or_completed_is_run_not_active(
    engine: Engine,
) -> None:
    await engine.submit("signal", None, run_id="s")
    await reached(engine, "s", "waiting")
    assert (await expect("RUN_NOT_ACTIVE", engine.retry("s"))).data["status"] == "waiting"
    await engine.submit("echo", 1, run_id="e")
    await ended(engine, "e")
    assert (await expect("RUN_NOT_ACTIVE", engine.retry("e"))).data["status"] == "completed"
    err = await expect("INVALID_PARAMS", engine.retry("e", mode="again"))
    assert err.data["field"] == "mode"


async def test_a_retried_run_goes_through_admission(engine: Engine) -> None:
    await engine.submit("flaky", None, run_id="f")
    await ended(engine, "f")
    await engine.pause(workflow_id="flaky")
    again = await engine.retry("f")
    assert again["status"] == "pending"
    assert (await engine.get("f"))["pending"] == {"paused_workflow": True}
    ew.FIXED.add("f")
    await engine.resume(workflow_id="flaky")
    assert (await ended(engine, "f"))["status"] == "completed"


# --- bulk -------------------------------------------------------------------------------------


async def test_bulk_applies_to_what_the_filter_selects_and_skips_the_wrong_state(
    engine: Engine,
) -> None:
    for n in range(3):
        await engine.submit("wait-then-step", None, run_id=f"w{n}", tags=["batch"])
        await reached(engine, f"w{n}", "waiting")
    await engine.submit("echo", 1, run_id="e", tags=["batch"])
    await ended(engine, "e")
    dry = await engine.bulk("pause", {"tag": "batch"}, dry_run=True)
    assert dry == {"matched": 4, "eligible": 3, "done": 0, "dry_run": True}
    assert await status(engine, "w0") == "waiting"
    assert await engine.bulk("pause", {"tag": "batch"}) == {
        "matched": 4, "eligible": 3, "done": 3}
    assert {await status(engine, f"w{n}") for n in range(3)} == {"paused"}
    assert (await engine.bulk("resume", {"status": "paused"}))["done"] == 3
    assert (await engine.bulk("cancel", {"workflow_id": "wait-then-step"}))["done"] == 3
    for n in range(3):  # bulk does not wait for them to unwind
        assert (await ended(engine, f"w{n}"))["status"] == "cancelled"
    assert (await engine.bulk("retry", {"status": "cancelled"}, mode="retrigger"))["done"] == 3
    for n in range(3):
        assert (await reached(engine, f"w{n}", "waiting"))["attempt"] == 2


async def test_bulk_filters_by_creation_time(engine: Engine) -> None:
    await engine.submit("echo", 1, run_id="old", delay="1h")
    cut = (await engine.get("old"))["created_at"] + 1e-6
    await asyncio.sleep(0.01)
    await engine.submit("echo", 2, run_id="new", delay="1h")
    assert (await engine.bulk("cancel", {"until": cut}, dry_run=True))["matched"] == 1
    assert (await engine.bulk("cancel", {"since": cut}))["done"] == 1
    assert (await status(engine, "old"), await status(engine, "new")) == ("pending", "cancelled")
    assert (await engine.bulk("cancel", {"since": "1h"}))["done"] == 1  # an hour ago


async def test_bulk_names_the_bad_filter_field(engine: Engine) -> None:
    err = await expect("INVALID_PARAMS", engine.bulk("cancel", {"colour": "red"}))
    assert err.data["field"] == "filter.colour"
    err = await expect("INVALID_PARAMS", engine.bulk("cancel", {"since": "yesterday-ish"}))
    assert err.data["field"] == "filter.since"
    err = await expect("INVALID_PARAMS", engine.bulk("explode", {}))
    assert err.data["field"] == "action"


async def test_bulk_cancel_of_ten_thousand_pending_runs(engine: Engine) -> None:
    now = engine.clock.now()
    await engine.storage.commit([
        storage.CreateRun(run_id=f"r{n}", workflow_id="echo", created_at=now, tags=("many",),
                          scheduled_at=now + 3600)
        for n in range(10_000)
    ])
    result = await engine.bulk("cancel", {"tag": "many"})
    assert result == {"matched": 10_000, "eligible": 10_000, "done": 10_000}
    assert (await engine.stats())["runs"] == {"cancelled": 10_000}


# --- the change feed --------------------------------------------------------------------------


async def test_changes_carry_every_status_change_and_replay_after_a_seq(engine: Engine) -> None:
    seen: list[dict[str, Any]] = []
    feed = engine.changes()
    first = asyncio.ensure_future(anext(feed))
    await asyncio.sleep(0)  # subscribed before the run moves
    await engine.submit("wait-then-step", None, run_id="w")
    seen.append(await first)
    while seen[-1]["status"] != "waiting":
        seen.append(await anext(feed))
    await engine.pause("w")
    await engine.signal("w", "go", 1)
    await engine.resume("w")
    while seen[-1]["status"] != "completed":
        seen.append(await anext(feed))
    await feed.aclose()
    statuses = [c["status"] for c in seen]
    assert statuses[:3] == ["pending", "running", "waiting"]
    assert statuses[3:5] == ["paused", "waiting"]
    assert statuses[-1] == "completed"
    assert {c["run_id"] for c in seen} == {"w"}
    seqs = [c["seq"] for c in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    replay = engine.changes(since=seqs[2])
    assert [(await anext(replay))["seq"] for _ in seqs[3:]] == seqs[3:]
    await replay.aclose()
