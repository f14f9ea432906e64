"""Schedules enforced by the engine (SPEC §2a) over a real SQLite file, on a manual clock.

Each test runs the engine with a :class:`~runtime.clock.ManualClock` and drives the timer
facility by hand: the timer task is stopped once the engine has started, and :func:`tick` sets
the clock, fires what is due and waits for the fires to be done. So every fire happens exactly
when the test says, and nothing depends on real time. Runs that must stay unfinished park on
the signal ``go`` (:func:`tests.orchestrator.flow_workflows.held`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest

import storage
from orchestrator.api import errors
from orchestrator.engine.engine import Engine
from orchestrator.engine.settings import Settings
from runtime.clock import ManualClock
from runtime.flow import Concurrency
from runtime.schedules import Schedule, declare, jitter_for
from runtime.workflow import WorkflowDefinition, WorkflowFn, _concurrency
from tests.orchestrator import flow_workflows as fw
from tests.orchestrator.conftest import GRACE, FaultyStorage, reach

START = "2026-01-01T00:00:00Z"


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture(autouse=True)
def _fresh_flow_state() -> Iterator[None]:
    fw.reset()
    yield
    fw.reset()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=at(START))


def define(
    id: str,
    fn: WorkflowFn = fw.quick,
    *,
    schedule: Schedule | list[Schedule] | None = None,
    concurrency: Concurrency | None = None,
    input_validator: Any = None,
    start_timeout: float | None = None,
) -> WorkflowDefinition:
    """A definition checked like ``@workflow`` (schedules named and checked)."""
    return WorkflowDefinition(
        id=id, fn=fn, version="1", concurrency=_concurrency(id, concurrency),
        schedules=declare(id, schedule), input_validator=input_validator,
        start_timeout=start_timeout, origin=f"{__name__}:{id}",
    )


@contextlib.asynccontextmanager
async def sched_engine(
    db_path: Path, clock: ManualClock, *definitions: WorkflowDefinition,
    faulty: bool = False,
) -> AsyncIterator[Engine]:
    """One engine life on ``db_path`` with these workflows; its timers fire only in tick()."""
    async with storage.SQLiteStorage.open(db_path) as opened:
        store = FaultyStorage(opened) if faulty else opened
        async with Engine(cast(storage.Storage, store), registry=fw.registry(*definitions),
                          settings=Settings(shutdown_grace=GRACE), clock=clock) as engine:
            await engine.scheduling.idle()  # fires the start-up found due
            await engine.timers.stop()
            yield engine


async def tick(engine: Engine, clock: ManualClock, when: str | float) -> None:
    """Set the clock to ``when``, fire every timer due, and wait for the schedules' fires."""
    clock.set(at(when) if isinstance(when, str) else when)
    await engine.timers.fire_due()
    await engine.scheduling.idle()


async def sched_runs(engine: Engine, workflow_id: str | None = None) -> list[str]:
    """Run ids made by schedules, oldest first."""
    runs = (await engine.list(workflow_id=workflow_id, limit=1000))["runs"]
    return sorted(r["run_id"] for r in runs if r["triggered_by"] == "schedule")


async def schedule(engine: Engine, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        s for s in (await engine.schedules())["schedules"] if s["name"] == name]
    assert found, f"no schedule {name!r}"
    return found[0]


async def reached(engine: Engine, run_id: str, *statuses: str) -> dict[str, Any]:
    return await asyncio.wait_for(reach(engine, run_id, *statuses), 5.0)


async def finish(engine: Engine, run_id: str) -> None:
    await engine.signal(run_id, "go", run_id)
    assert (await engine.wait(run_id, timeout=5))["status"] == "completed"


async def status(engine: Engine, run_id: str) -> str:
    got: str = (await engine.get(run_id))["status"]
    return got


# --- rule kinds -----------------------------------------------------------------------------------


async def test_a_cron_schedule_makes_one_run_per_due_time_named_by_it(
    db_path: Path, clock: ManualClock
) -> None:
    nightly = define("report", schedule=Schedule(cron="0 3 * * *", input={"kind": "daily"},
                                                 name="nightly"))
    async with sched_engine(db_path, clock, nightly) as engine:
        assert (await schedule(engine, "nightly"))["next_fire_at"] == at("2026-01-01T03:00:00Z")
        await tick(engine, clock, "2026-01-01T02:59:59Z")
        assert await sched_runs(engine) == []
        await tick(engine, clock, "2026-01-01T03:00:00Z")
        run_id = "sched:nightly:2026-01-01T03:00:00Z"
        assert await sched_runs(engine) == [run_id]
        done = await engine.wait(run_id, timeout=5)
        assert (done["status"], done["input"], done["triggered_by"]) == (
            "completed", {"kind": "daily"}, "schedule")
        await tick(engine, clock, "2026-01-01T03:00:30Z")  # the same due time: nothing more
        await tick(engine, clock, "2026-01-02T03:00:00Z")
        assert await sched_runs(engine) == [run_id, "sched:nightly:2026-01-02T03:00:00Z"]
        listed = await schedule(engine, "nightly")
        assert (listed["last_fire_at"], listed["fired"], listed["next_fire_at"]) == (
            at("2026-01-02T03:00:00Z"), 2, at("2026-01-03T03:00:00Z"))


async def test_every_first_fires_one_interval_after_registration(
    db_path: Path, clock: ManualClock
) -> None:
    tick_wf = define("tick", schedule=Schedule(every="10m"))
    async with sched_engine(db_path, clock, tick_wf) as engine:
        await tick(engine, clock, "2026-01-01T00:09:59Z")
        assert await sched_runs(engine) == []
        await tick(engine, clock, "2026-01-01T00:10:00Z")
        await engine.wait("sched:tick:2026-01-01T00:10:00Z", timeout=5)
        await tick(engine, clock, "2026-01-01T00:20:00Z")
        assert await sched_runs(engine) == [
            "sched:tick:2026-01-01T00:10:00Z", "sched:tick:2026-01-01T00:20:00Z"]


async def test_at_fires_once(db_path: Path, clock: ManualClock) -> None:
    once = define("once", schedule=Schedule(at="2026-01-01T12:00:00Z"))
    async with sched_engine(db_path, clock, once) as engine:
        await tick(engine, clock, "2026-01-01T12:00:00Z")
        await tick(engine, clock, "2026-01-05T12:00:00Z")
        assert await sched_runs(engine) == ["sched:once:2026-01-01T12:00:00Z"]
        assert (await schedule(engine, "once"))["next_fire_at"] is None


@pytest.mark.parametrize(
    ("zone", "cron", "start", "expected"),
    [
        # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist and fires at 01:00 UTC.
        ("Europe/Paris", "30 2 * * *", "2026-03-28T00:00:00Z",
         ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]),
        # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice, fires the first time only.
        ("Europe/Paris", "30 2 * * *", "2026-10-24T00:00:00Z",
         ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]),
        # 2026-03-08 02:00 EST -> 03:00 EDT.
        ("America/New_York", "30 2 * * *", "2026-03-07T00:00:00Z",
         ["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]),
        # 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 fires in EDT only.
        ("America/New_York", "30 1 * * *", "2026-10-31T00:00:00Z",
         ["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]),
    ],
)
async def test_a_fixed_hour_schedule_fires_once_per_local_day_across_dst(
    db_path: Path, zone: str, cron: str, start: str, expected: list[str]
) -> None:
    clock = ManualClock(start=at(start))
    local = define("local", schedule=Schedule(cron=cron, timezone=zone, overlap="allow"))
    async with sched_engine(db_path, clock, local) as engine:
        moment = at(start)
        for _ in range(3 * 48):  # every half hour for three days
            moment += 1800
            await tick(engine, clock, moment)
        assert await sched_runs(engine) == [f"sched:local:{t}" for t in expected]


async def test_jitter_delays_the_fire_but_not_the_run_id(
    db_path: Path, clock: ManualClock
) -> None:
    jittery = define("jittery", schedule=Schedule(cron="0 * * * *", jitter="10m"))
    due = at("2026-01-01T01:00:00Z")
    delay = jitter_for("jittery", due, 600.0)
    async with sched_engine(db_path, clock, jittery) as engine:
        assert (await schedule(engine, "jittery"))["next_fire_at"] == due + delay
        await tick(engine, clock, due + delay - 0.001)
        assert await sched_runs(engine) == []
        await tick(engine, clock, due + delay)
        assert await sched_runs(engine) == ["sched:jittery:2026-01-01T01:00:00Z"]


# --- overlap --------------------------------------------------------------------------------------

HOURLY = "0 * * * *"


def hour(n: int) -> str:
    return f"2026-01-01T{n:02d}:00:00Z"


def sched_id(name: str, n: int) -> str:
    return f"sched:{name}:{hour(n)}"


async def test_skip_drops_a_fire_while_the_previous_run_is_going(
    db_path: Path, clock: ManualClock
) -> None:
    wf = define("job", fw.held, schedule=Schedule(cron=HOURLY, overlap="skip"))
    async with sched_engine(db_path, clock, wf) as engine:
        await tick(engine, clock, hour(1))
        await reached(engine, sched_id("job", 1), "waiting")
        await tick(engine, clock, hour(2))
        assert await sched_runs(engine) == [sched_id("job", 1)]
        assert (await schedule(engine, "job"))["skipped"] == 1
        await finish(engine, sched_id("job", 1))
        await tick(engine, clock, hour(3))
        assert await sched_runs(engine) == [sched_id("job", 1), sched_id("job", 3)]


async def test_buffer_one_keeps_one_fire_waiting_and_drops_the_rest(
    db_path: Path, clock: ManualClock
) -> None:
    wf = define("job", fw.held, schedule=Schedule(cron=HOURLY, overlap="buffer_one"))
    async with sched_engine(db_path, clock, wf) as engine:
        await tick(engine, clock, hour(1))
        await reached(engine, sched_id("job", 1), "waiting")
        await tick(engine, clock, hour(2))
        await tick(engine, clock, hour(3))
        assert await sched_runs(engine) == [sched_id("job", 1), sched_id("job", 2)]
        assert await status(engine, sched_id("job", 2)) == "pending"
        assert (await engine.get(sched_id("job", 2)))["pending"]["concurrency"] == {
            "group": "schedule:job", "limit": 1, "holders": 1}
        assert (await schedule(engine, "job"))["skipped"] == 1
        await finish(engine, sched_id("job", 1))
        await reached(engine, sched_id("job", 2), "waiting")
        await tick(engine, clock, hour(4))  # run 2 is going: this one may wait
        assert await status(engine, sched_id("job", 4)) == "pending"
        await finish(engine, sched_id("job", 2))
        await finish(engine, sched_id("job", 4))
    assert [sched_id("job", 1), sched_id("job", 2), sched_id("job", 4)] == fw.STARTED


async def test_buffer_all_runs_every_fire_one_after_another(
    db_path: Path, clock: ManualClock
) -> None:
    wf = define("job", fw.held, schedule=Schedule(cron=HOURLY, overlap="buffer_all"))
    async with sched_engine(db_path, clock, wf) as engine:
        for n in (1, 2, 3):
            await tick(engine, clock, hour(n))
        await reached(engine, sched_id("job", 1), "waiting")
        assert [await status(engine, sched_id("job", n)) for n in (2, 3)] == [
            "pending", "pending"]
        for n in (1, 2, 3):
            await reached(engine, sched_id("job", n), "waiting")
            await finish(engine, sched_id("job", n))
        assert (await schedule(engine, "job"))["skipped"] == 0
    assert [sched_id("job", n) for n in (1, 2, 3)] == fw.STARTED
    assert fw.PEAK["job"] == 1


async def test_cancel_other_cancels_the_running_one_and_starts_the_new_one(
    db_path: Path, clock: ManualClock
) -> None:
    wf = define("job", fw.held, schedule=Schedule(cron=HOURLY, overlap="cancel_other"))
    async with sched_engine(db_path, clock, wf) as engine:
        await tick(engine, clock, hour(1))
        await reached(engine, sched_id("job", 1), "waiting")
        await tick(engine, clock, hour(2))
        old = await engine.wait(sched_id("job", 1), timeout=5)
        assert old["status"] == "cancelled" and old["error"]["code"] == "SCHEDULE_REPLACED"
        assert [sched_id("job", 1)] == fw.COMPENSATED
        await reached(engine, sched_id("job", 2), "waiting")
        await finish(engine, sched_id("job", 2))


async def test_allow_runs_fires_side_by_side(db_path: Path, clock: ManualClock) -> None:
    wf = define("job", fw.held, schedule=Schedule(cron=HOURLY, overlap="allow"))
    async with sched_engine(db_path, clock, wf) as engine:
        await tick(engine, clock, hour(1))
        await tick(engine, clock, hour(2))
        for n in (1, 2):
            await reached(engine, sched_id("job", n), "waiting")
        for n in (1, 2):
            await finish(engine, sched_id("job", n))
    assert fw.PEAK["job"] == 2


async def test_the_workflows_own_flow_control_applies_to_scheduled_runs(
    db_path: Path, clock: ManualClock
) -> None:
    wf = define("job", fw.held, concurrency=Concurrency(1),
                schedule=Schedule(cron=HOURLY, overlap="allow"))
    async with sched_engine(db_path, clock, wf) as engine:
        await tick(engine, clock, hour(1))
        await reached(engine, sched_id("job", 1), "waiting")
        await tick(engine, clock, hour(2))
        assert (await engine.get(sched_id("job", 2)))["pending"]["concurrency"]["group"] == "job"
        await finish(engine, sched_id("job", 1))
        await reached(engine, sched_id("job", 2), "waiting")
        await finish(engine, sched_id("job", 2))


async def test_an_input_the_validator_rejects_makes_a_failed_run_that_never_runs(
    db_path: Path, clock: ManualClock
) -> None:
    def needs_dict(value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("input must be an object")
        return value

    wf = define("strict", schedule=Schedule(cron=HOURLY, input=[1]), input_validator=needs_dict)
    async with sched_engine(db_path, clock, wf) as engine:
        await tick(engine, clock, hour(1))
        run = await engine.get(sched_id("strict", 1))
        assert run["status"] == "failed" and run["error"]["code"] == "VALIDATION"
    assert fw.STARTED == []


# --- restarts -------------------------------------------------------------------------------------


async def test_fires_missed_while_down_collapse_into_one_at_start_and_are_counted(
    db_path: Path, clock: ManualClock
) -> None:
    wf = define("job", schedule=Schedule(cron=HOURLY))
    async with sched_engine(db_path, clock, wf) as engine:
        await tick(engine, clock, hour(1))
        await engine.wait(sched_id("job", 1), timeout=5)
    clock.set(at("2026-01-01T05:30:00Z"))  # 02:00 .. 05:00 passed while no daemon ran
    async with sched_engine(db_path, clock, wf) as engine:
        assert await sched_runs(engine) == [sched_id("job", 1), sched_id("job", 5)]
        listed = await schedule(engine, "job")
        assert (listed["missed"], listed["next_fire_at"]) == (3, at(hour(6)))
        await engine.wait(sched_id("job", 5), timeout=5)
    async with sched_engine(db_path, clock, wf) as engine:  # started again: nothing new
        assert await sched_runs(engine) == [sched_id("job", 1), sched_id("job", 5)]
        await tick(engine, clock, hour(6))
        assert (await sched_runs(engine))[-1] == sched_id("job", 6)


async def test_a_fire_whose_commit_failed_fires_again_once(
    db_path: Path, clock: ManualClock
) -> None:
    """The timer is leased, not deleted, when it fires: a lost fire is retried, never
    duplicated (its run id is the due time)."""
    wf = define("job", schedule=Schedule(cron=HOURLY))
    async with sched_engine(db_path, clock, wf, faulty=True) as engine:
        store = cast(FaultyStorage, engine.storage)
        store.fail("execute", storage.StorageFull("disk full"),
                   when=lambda op: isinstance(op, storage.FireSchedule))
        await tick(engine, clock, hour(1))
        assert store.armed == 0 and await sched_runs(engine) == []
        await tick(engine, clock, at(hour(1)) + 5)  # the lease has not run out
        assert await sched_runs(engine) == []
        await tick(engine, clock, at(hour(1)) + 11)
        await tick(engine, clock, at(hour(1)) + 30)
        assert await sched_runs(engine) == [sched_id("job", 1)]
        assert (await schedule(engine, "job"))["next_fire_at"] == at(hour(2))


async def test_a_fire_lost_to_a_crash_after_its_timer_fired_happens_at_the_next_start(
    db_path: Path, clock: ManualClock
) -> None:
    """The timer was claimed (leased), the fire never committed: the next start places the
    timer from the schedule's row again, so the fire does not wait out the lease."""
    wf = define("job", schedule=Schedule(cron=HOURLY))
    async with sched_engine(db_path, clock, wf, faulty=True) as engine:
        cast(FaultyStorage, engine.storage).fail(
            "execute", storage.StorageFull("disk full"),
            when=lambda op: isinstance(op, storage.FireSchedule))
        await tick(engine, clock, hour(1))
        assert await sched_runs(engine) == []
    clock.set(at(hour(1)) + 1)
    async with sched_engine(db_path, clock, wf) as engine:
        assert await sched_runs(engine) == [sched_id("job", 1)]
        assert (await schedule(engine, "job"))["missed"] == 0


async def test_cancel_other_cut_short_by_a_crash_is_finished_at_start(
    db_path: Path, clock: ManualClock
) -> None:
    """The fire committed, the daemon died before cancelling the old run: at start the old
    run is cancelled and the new one, queued behind it, starts."""
    wf = define("job", fw.held, schedule=Schedule(cron=HOURLY, overlap="cancel_other"))
    async with sched_engine(db_path, clock, wf) as engine:
        await tick(engine, clock, hour(1))
        await reached(engine, sched_id("job", 1), "waiting")
        spec = engine.scheduling  # commit the second fire without its cancel, as a crash would
        current = await engine.storage.get_schedule("job")
        assert current is not None
        from runtime.schedules import ScheduleSpec
        fire_spec = ScheduleSpec.from_json(current.spec)
        run_op = spec._new_run("job", "job", fire_spec, at(hour(2)), at(hour(2)))
        await engine.storage.execute(storage.FireSchedule(
            "job", at(hour(2)), at(hour(2)), run_op, expect_next_due=at(hour(2)),
            next_due_at=at(hour(3)), next_fire_at=at(hour(3))))
    async with sched_engine(db_path, clock, wf) as engine:
        old = await engine.wait(sched_id("job", 1), timeout=5)
        assert old["error"]["code"] == "SCHEDULE_REPLACED"
        await reached(engine, sched_id("job", 2), "waiting")
        await finish(engine, sched_id("job", 2))


# --- pause, resume, trigger, backfill -------------------------------------------------------------


async def test_a_paused_schedule_does_not_fire_and_resumes_from_its_next_due_time(
    db_path: Path, clock: ManualClock
) -> None:
    wf = define("job", schedule=Schedule(cron=HOURLY))
    async with sched_engine(db_path, clock, wf) as engine:
        paused = await engine.schedule_pause("job")
        assert (paused["paused"], paused["next_fire_at"]) == (True, None)
        await tick(engine, clock, "2026-01-01T03:30:00Z")
        assert await sched_runs(engine) == []
        resumed = await engine.schedule_resume("job")
        assert (resumed["paused"], resumed["next_fire_at"]) == (False, at(hour(4)))
        assert (await engine.schedule_resume("job"))["paused"] is False  # idempotent
        await tick(engine, clock, hour(4))
        assert await sched_runs(engine) == [sched_id("job", 4)]
        assert (await schedule(engine, "job"))["missed"] == 0  # paused is not missed


async def test_trigger_fires_now_also_while_paused_and_leaves_the_next_due_time(
    db_path: Path, clock: ManualClock
) -> None:
    wf = define("job", schedule=Schedule(cron=HOURLY, input={"n": 1}))
    async with sched_engine(db_path, clock, wf) as engine:
        await engine.schedule_pause("job")
        clock.set(at("2026-01-01T00:15:00.5Z"))
        (run,) = (await engine.schedule_trigger("job"))["runs"]
        assert run["run_id"] == "sched:job:2026-01-01T00:15:00.500Z"
        assert (await engine.wait(run["run_id"], timeout=5))["output"] == {"n": 1}
        (again,) = (await engine.schedule_trigger("job"))["runs"]  # the same instant: one run
        assert again["run_id"] == run["run_id"] and len(await sched_runs(engine)) == 1
        listed = await schedule(engine, "job")
        assert (listed["paused"], listed["last_fire_at"]) == (True, at("2026-01-01T00:15:00.5Z"))
        assert listed["next_due_at"] is None  # paused
        await engine.schedule_resume("job")
        assert (await schedule(engine, "job"))["next_fire_at"] == at(hour(1))


async def test_backfill_makes_a_run_per_due_time_inclusive_and_idempotent(
    db_path: Path, clock: ManualClock
) -> None:
    wf = define("job", fw.held, schedule=Schedule(cron="0 3 * * *", overlap="buffer_all"))
    clock.set(at("2026-02-01T00:00:00Z"))
    async with sched_engine(db_path, clock, wf) as engine:
        runs = (await engine.schedule_backfill(
            "job", "2026-01-10T03:00:00Z", "2026-01-12T03:00:00Z"))["runs"]
        ids = [f"sched:job:2026-01-{d}T03:00:00Z" for d in (10, 11, 12)]
        assert [r["run_id"] for r in runs] == ids
        assert [r["triggered_by"] for r in runs] == ["schedule"] * 3
        again = (await engine.schedule_backfill(
            "job", "2026-01-10T00:00:00Z", "2026-01-12T03:00:00Z"))["runs"]
        assert [r["run_id"] for r in again] == ids and await sched_runs(engine) == ids
        for run_id in ids:  # one at a time, in due order (the schedule's group)
            await reached(engine, run_id, "waiting")
            await finish(engine, run_id)
        assert (await schedule(engine, "job"))["last_fire_at"] is None  # not a live fire
    assert ids == fw.STARTED and fw.PEAK["job"] == 1


# --- reconcile ------------------------------------------------------------------------------------


async def test_code_schedules_are_reconciled_at_start_and_api_ones_left_alone(
    db_path: Path, clock: ManualClock
) -> None:
    first = [define("a", schedule=Schedule(cron="0 3 * * *")),
             define("b", schedule=Schedule(every="1h")),
             define("c", schedule=Schedule(cron=HOURLY))]
    async with sched_engine(db_path, clock, *first) as engine:
        await engine.schedule_create("made", "a", every="2h")
        await tick(engine, clock, hour(1))
        assert (await schedule(engine, "c"))["fired"] == 1
    second = [define("a", schedule=Schedule(cron="0 4 * * *")),  # changed
              define("c", schedule=Schedule(cron=HOURLY, input={"x": 1})),  # input only
              define("d", schedule=Schedule(cron="30 * * * *"))]  # added; b removed
    async with sched_engine(db_path, clock, *second) as engine:
        listed = {s["name"]: s for s in (await engine.schedules())["schedules"]}
        assert sorted(listed) == ["a", "c", "d", "made"]
        assert (listed["a"]["rule"], listed["a"]["next_fire_at"]) == (
            "cron 0 4 * * *", at(hour(4)))
        assert (listed["c"]["input"], listed["c"]["fired"], listed["c"]["next_fire_at"]) == (
            {"x": 1}, 1, at(hour(2)))  # same rule: keeps its place and counters
        assert listed["d"]["source"] == "code" and listed["made"]["source"] == "api"
        assert listed["made"]["next_fire_at"] == at(START) + 7200
        assert "schedule:b" not in {t.timer_id for t in await engine.storage.due_timers(
            at("2030-01-01T00:00:00Z"), 100)}


# --- errors ---------------------------------------------------------------------------------------


async def test_unknown_schedule_is_not_found(db_path: Path, clock: ManualClock) -> None:
    async with sched_engine(db_path, clock, define("a")) as engine:
        for call in (engine.schedule_delete("nope"), engine.schedule_pause("nope"),
                     engine.schedule_resume("nope"), engine.schedule_trigger("nope"),
                     engine.schedule_backfill("nope", START, START)):
            with pytest.raises(errors.NotFound) as info:
                await call
            assert info.value.data == {"schedule_id": "nope"}
        with pytest.raises(errors.NotFound):
            await engine.schedule_create("x", "no-such-workflow", every=60)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"cron": "nope"}, "cron"),
        ({"cron": "0 3 * * *", "every": 60}, "every"),
        ({}, "cron"),
        ({"cron": "0 3 * * *", "timezone": "Nowhere/City"}, "timezone"),
        ({"cron": "0 3 * * *", "overlap": "sometimes"}, "overlap"),
        ({"every": 0}, "every"),
        ({"at": "2025-01-01T00:00:00Z"}, "at"),
    ],
)
async def test_bad_schedule_params_are_invalid_params_naming_the_field(
    db_path: Path, clock: ManualClock, options: dict[str, Any], field: str
) -> None:
    async with sched_engine(db_path, clock, define("a")) as engine:
        with pytest.raises(errors.InvalidParams) as info:
            await engine.schedule_create("s", "a", **options)
        assert info.value.data["field"] == field


async def test_code_schedules_cannot_be_replaced_or_deleted_through_the_api(
    db_path: Path, clock: ManualClock
) -> None:
    async with sched_engine(db_path, clock, define("a", schedule=Schedule(every=60))) as engine:
        with pytest.raises(errors.InvalidParams) as info:
            await engine.schedule_create("a", "a", every=30)
        assert info.value.data["field"] == "name"
        with pytest.raises(errors.InvalidParams):
            await engine.schedule_delete("a")
        with pytest.raises(errors.InvalidParams) as info:
            await engine.schedule_create("bad name", "a", every=30)
        assert info.value.data["field"] == "name"
        with pytest.raises(errors.InvalidParams) as info:
            await engine.schedule_backfill("a", "2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z")
        assert info.value.data["field"] == "end"
        with pytest.raises(errors.InvalidParams) as info:  # the future is not backfilled
            await engine.schedule_backfill("a", START, "2027-01-01T00:00:00Z")
        assert info.value.data["field"] == "end"


async def test_an_api_schedule_persists_until_deleted(db_path: Path, clock: ManualClock) -> None:
    async with sched_engine(db_path, clock, define("a")) as engine:
        made = await engine.schedule_create("api", "a", cron=HOURLY, input={"k": 1},
                                            overlap="buffer_all")
        assert (made["source"], made["overlap"], made["input"]) == ("api", "buffer_all",
                                                                   {"k": 1})
    async with sched_engine(db_path, clock, define("a")) as engine:
        await tick(engine, clock, hour(1))
        assert await sched_runs(engine) == [sched_id("api", 1)]
        assert await engine.schedule_delete("api") == {"deleted": True}
        await tick(engine, clock, hour(2))
        assert await sched_runs(engine) == [sched_id("api", 1)]
        assert (await engine.schedules())["schedules"] == []
