"""The schedule ops (SPEC §2a): a schedule's row and its timer move together, a fire makes at
most one run per due time, and a fired schedule timer is leased rather than lost."""

from __future__ import annotations

import storage as st
from storage.sqlite.mutations import SCHEDULE_LEASE

SPEC = {"cron": "0 * * * *", "timezone": "UTC", "overlap": "skip"}


def run_op(run_id: str, at: float) -> st.CreateRun:
    return st.CreateRun(run_id=run_id, workflow_id="wf", created_at=at, triggered_by="schedule")


async def timers(s: st.Storage) -> dict[str, float]:
    return {t.timer_id: t.due_at for t in await s.due_timers(1e12, 100)}


async def put(s: st.Storage, **kw: object) -> st.ScheduleRecord:
    op = st.UpsertSchedule("hourly", "wf", SPEC, 100.0, next_fire_at=3600.0, **kw)  # type: ignore[arg-type]
    result: st.ScheduleRecord = await s.execute(op)
    return result


async def fire(s: st.Storage, due: float, **kw: object) -> st.ScheduleFired:
    kw.setdefault("expect_next_due", due)
    kw.setdefault("next_due_at", due + 3600)
    kw.setdefault("next_fire_at", due + 3600)
    result: st.ScheduleFired = await s.execute(
        st.FireSchedule("hourly", due, due, run_op(f"sched:hourly:{due}", due), **kw)  # type: ignore[arg-type]
    )
    return result


async def test_a_schedule_and_its_timer_are_stored_together(storage: st.Storage) -> None:
    stored = await put(storage, source=st.ScheduleSource.CODE)
    assert (stored.next_due_at, stored.source, stored.paused) == (3600.0, "code", False)
    assert await timers(storage) == {"schedule:hourly": 3600.0}
    paused = await storage.execute(st.PauseSchedule("hourly", True, 200.0))
    assert paused.paused and await timers(storage) == {}
    await put(storage)  # replacing the definition keeps it paused
    assert await timers(storage) == {}
    resumed = await storage.execute(st.PauseSchedule("hourly", False, 300.0, 7200.0, 7210.0))
    assert (resumed.next_due_at, resumed.next_fire_at) == (7200.0, 7210.0)
    assert await timers(storage) == {"schedule:hourly": 7210.0}
    assert await storage.execute(st.DeleteSchedule("hourly")) is True
    assert await timers(storage) == {} and await storage.get_schedule("hourly") is None


async def test_a_fire_creates_its_run_records_itself_and_moves_the_timer(
    storage: st.Storage,
) -> None:
    await put(storage)
    fired = await fire(storage, 3600.0, missed=2)
    assert fired.created and fired.run is not None and not fired.stale
    assert fired.schedule is not None
    assert (fired.schedule.last_fire_at, fired.schedule.last_run_id, fired.schedule.fired,
            fired.schedule.missed, fired.schedule.next_due_at) == (
        3600.0, "sched:hourly:3600.0", 1, 2, 7200.0)
    assert await timers(storage) == {"schedule:hourly": 7200.0}
    again = await fire(storage, 3600.0)  # computed from a due time no longer stored
    assert again.stale and again.run is None
    assert (await storage.get_schedule("hourly")).fired == 1  # type: ignore[union-attr]


async def test_overlap_drops_are_decided_on_the_previous_fires_run(storage: st.Storage) -> None:
    await put(storage)
    first = await fire(storage, 3600.0)
    assert first.run is not None
    dropped = await fire(storage, 7200.0, drop_if="active")
    assert dropped.dropped and dropped.run is None and dropped.previous == first.run
    assert dropped.schedule is not None and dropped.schedule.skipped == 1
    assert dropped.schedule.next_due_at == 10_800.0  # it still moves on
    waiting = await fire(storage, 10_800.0, drop_if="waiting")  # previous never started
    assert waiting.dropped
    await storage.execute(st.UpdateRun(first.run.run_id, at=1.0, status=st.RunStatus.RUNNING,
                                       started_at=1.0))
    kept = await fire(storage, 14_400.0, drop_if="waiting")  # previous started: this waits
    assert kept.created
    triggered = await storage.execute(st.FireSchedule(
        "hourly", 15_000.0, 15_000.0, run_op("manual", 15_000.0)))
    assert triggered.created and triggered.schedule is not None
    assert triggered.schedule.next_due_at == 18_000.0  # a trigger leaves the next due time


async def test_a_fired_schedule_timer_is_leased_not_deleted(storage: st.Storage) -> None:
    await put(storage)
    (claimed,) = await storage.claim_due_timers(3600.5)
    assert claimed.timer.kind is st.TimerKind.SCHEDULE and claimed.waitpoint is None
    assert await timers(storage) == {"schedule:hourly": 3600.5 + SCHEDULE_LEASE}
    assert not await storage.claim_due_timers(3601.0)  # not again until the lease ends
