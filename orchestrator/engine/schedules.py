"""Schedules (SPEC §2a): reconciled at start, fired by their timers, managed by the service.

A schedule's row in storage is the truth and its timer ``schedule:<name>`` (kind ``schedule``)
wakes the engine at the row's next fire time; nothing polls. A fire is one storage op
(``FireSchedule``): it creates the run ``sched:<name>:<due ISO-8601 UTC>``, records the fire
and moves the timer to the next due time this module computed, in one transaction. The run id
makes a fire redone after a crash (or by a second daemon) a no-op, and the op refuses a fire
computed from a due time that is no longer stored. The new run then goes through admission
like any other: its workflow's concurrency, throttle and time to live apply.

Overlap, when the previous fire's run has not ended:

- ``skip`` / ``buffer_one``: the op drops the fire (counted ``skipped``) if that run is still
  going / has not even started;
- ``buffer_one`` / ``buffer_all`` (and ``skip``'s manual triggers and backfills): every run of
  the schedule joins the group ``schedule:<name>`` with limit 1 (``flow.plan.schedule_group``),
  so waiting runs queue in the existing gate, one after another, crash-safe as every group is;
- ``cancel_other``: same group, and the fire cancels the schedule's runs that have not ended
  (code ``SCHEDULE_REPLACED``); at start, a fire that committed before a crash but whose
  cancel was lost is finished by :meth:`Schedules.after_recovery`;
- ``allow``: no group, runs side by side.

Fires missed while no daemon ran collapse into one when the stored timer fires at start (its
run id has the latest missed due time, so a crash during start-up does not fire twice), counted
``missed``; the rule continues from that due time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import orjson
import structlog

import storage
from orchestrator.api import errors, service, views
from orchestrator.api.service import JSONDict
from orchestrator.engine import triggers
from orchestrator.engine.flow.admission import Admission
from orchestrator.engine.flow.plan import EMPTY, Plan, plan_for, schedule_group
from runtime import errors as rt_errors
from runtime import schedules as rs
from runtime.clock import Clock
from runtime.flow import KeyResolutionError
from runtime.workflow import Registry, WorkflowDefinition

log = structlog.get_logger("wf.schedules")

REPLACED = "SCHEDULE_REPLACED"
"""The error code of a run that a ``cancel_other`` fire cancelled."""
MAX_BACKFILL = 10_000
"""Due times one ``schedule_backfill`` may create runs for."""

CancelRun = Callable[[storage.RunRecord, str, str], Awaitable[None]]
"""Cancel a run that has not ended (``run, reason, code``), started or not."""


class Schedules:
    def __init__(
        self,
        *,
        storage_: storage.Storage,
        clock: Clock,
        registry: Registry,
        admission: Admission,
        cancel: CancelRun,
        timer_stored: Callable[[float], None],
        max_payload_bytes: int,
    ) -> None:
        self._storage = storage_
        self._clock = clock
        self._registry = registry
        self._admission = admission
        self._cancel = cancel
        self._timer_stored = timer_stored
        self._max_payload_bytes = max_payload_bytes
        # One fire at a time per schedule from this daemon (the op decides across daemons).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ start-up

    async def reconcile(self) -> None:
        """Bring the stored code-declared schedules in line with the registry: new ones added
        (first due from now), changed ones updated (a changed rule starts again from now; an
        unchanged one keeps its next due time, also one missed while down), removed ones
        deleted. Schedules created through the API are left alone. One transaction."""
        now = self._clock.now()
        stored = {s.name: s for s in await self._storage.list_schedules()}
        declared: dict[str, tuple[WorkflowDefinition, rs.ScheduleSpec]] = {}
        for definition in self._registry:
            for item in definition.schedules:
                declared[item.name] = (definition, item.spec)
        batch: list[storage.WriteOp[Any]] = []
        for name, (definition, spec) in sorted(declared.items()):
            current = stored.get(name)
            if current is not None and current.source is storage.ScheduleSource.API:
                log.warning("schedule.conflict", schedule=name, workflow_id=definition.id,
                            detail="a schedule created through the API has this name; the "
                            "one declared in code is not installed")
                continue
            spec_json = spec.to_json()
            if (current is not None and current.workflow_id == definition.id
                    and current.spec == spec_json):
                continue
            next_due = spec.first_due(now)
            if current is not None and current.workflow_id == definition.id:
                old = _spec_or_none(current)
                if old is not None and old.same_rule(spec):
                    next_due = current.next_due_at
            if next_due is None and spec.kind == "at":
                log.warning("schedule.past", schedule=name, workflow_id=definition.id,
                            at=spec.at, detail="its time has passed: it never fires")
            batch.append(self._upsert(name, definition.id, spec, now, next_due,
                                      storage.ScheduleSource.CODE))
            log.info("schedule.updated" if current is not None else "schedule.added",
                     schedule=name, workflow_id=definition.id, rule=spec.describe())
        touched = {op.name for op in batch if isinstance(op, storage.UpsertSchedule)}
        for name, current in stored.items():
            if current.source is storage.ScheduleSource.CODE and name not in declared:
                batch.append(storage.DeleteSchedule(name))
                log.info("schedule.removed", schedule=name, workflow_id=current.workflow_id)
            elif (name not in touched and not current.paused
                  and current.next_fire_at is not None):
                # The row is the truth: a timer leased by a fire that a crash cut short would
                # otherwise wait out its lease; placed again, an overdue one fires at start.
                batch.append(storage.UpsertTimer(
                    storage.ops.schedule_timer_id(name), storage.TimerKind.SCHEDULE,
                    current.next_fire_at, now, payload={"schedule": name}))
        if batch:
            await self._storage.commit(batch)

    async def after_recovery(self) -> None:
        """Finish ``cancel_other`` fires cut short by a crash: a schedule whose last fire's run
        has not ended cancels the other runs still holding its group."""
        for schedule in await self._storage.list_schedules():
            spec = _spec_or_none(schedule)
            if spec is None or spec.overlap != "cancel_other" or schedule.last_run_id is None:
                continue
            holders = self._admission.gate.holders(schedule_group(schedule.name))
            if not holders - {schedule.last_run_id}:
                continue
            last = await self._storage.get_run(schedule.last_run_id)
            if last is not None and not last.is_terminal:
                await self._replace(schedule.name, last, None)

    # ------------------------------------------------------------------ timers

    def on_timer(self, timer: storage.TimerRecord) -> None:
        """A schedule's timer fired (called by the timer facility)."""
        name = timer.payload.get("schedule") if isinstance(timer.payload, dict) else None
        if not isinstance(name, str):
            name = timer.timer_id.removeprefix("schedule:")
        self._spawn(self._fire_due(name))

    async def _fire_due(self, name: str) -> None:
        async with self._lock(name):
            schedule = await self._storage.get_schedule(name)
            if schedule is None or schedule.paused or schedule.next_due_at is None:
                return
            spec = _spec_or_none(schedule)
            if spec is None:
                return
            now = self._clock.now()
            if spec.fire_at(name, schedule.next_due_at) > now:
                # Woken before the row's fire time (a lease ran out): the row says when.
                if schedule.next_fire_at is not None:
                    await self._storage.execute(storage.UpsertTimer(
                        storage.ops.schedule_timer_id(name), storage.TimerKind.SCHEDULE,
                        schedule.next_fire_at, now, payload={"schedule": name}))
                    self._timer_stored(schedule.next_fire_at)
                return
            due, missed = spec.collapse(name, schedule.next_due_at, now)
            next_due = spec.next_due(due)
            await self._fire(
                schedule, spec, due, now, missed=missed, expect=schedule.next_due_at,
                next_due=next_due,
                drop_if="active" if spec.overlap == "skip" else (
                    "waiting" if spec.overlap == "buffer_one" else "never"),
            )

    async def _fire(
        self,
        schedule: storage.ScheduleRecord,
        spec: rs.ScheduleSpec,
        due: float,
        now: float,
        *,
        missed: int = 0,
        expect: float | storage.ops.Unset = storage.UNSET,
        next_due: float | None = None,
        drop_if: storage.ops.DropIf = "never",
    ) -> storage.RunRecord | None:
        """Commit one fire (the caller holds the schedule's lock); start its run."""
        name = schedule.name
        next_fire = None if next_due is None else spec.fire_at(name, next_due)
        result = await self._storage.execute(storage.FireSchedule(
            name=name, at=now, due_at=due,
            run=self._new_run(name, schedule.workflow_id, spec, due, now),
            drop_if=drop_if, expect_next_due=expect, next_due_at=next_due,
            next_fire_at=next_fire, missed=missed,
        ))
        if result.stale:
            return None
        if expect is not storage.UNSET and next_fire is not None:
            self._timer_stored(next_fire)
        if missed:
            log.warning("schedule.missed", schedule=name, workflow_id=schedule.workflow_id,
                        missed=missed, due_at=due)
        if result.dropped:
            log.info("schedule.skipped", schedule=name, workflow_id=schedule.workflow_id,
                     due_at=due, overlap=spec.overlap,
                     previous_run_id=None if result.previous is None else result.previous.run_id)
            return None
        run = result.run
        assert run is not None
        if result.created:
            log.info("schedule.fired", schedule=name, workflow_id=run.workflow_id,
                     run_id=run.run_id, due_at=due)
            if spec.overlap == "cancel_other":
                await self._replace(name, run, result.previous)
            run = await self._start(run)
        return run

    def _new_run(
        self, name: str, workflow_id: str, spec: rs.ScheduleSpec, due: float, now: float
    ) -> storage.CreateRun:
        """The run a fire for ``due`` creates: the schedule's input (through the workflow's
        input validator), its workflow's flow plan plus the schedule's group, and its time to
        live counted from the fire. A rejected input makes a run that is ``failed`` at once
        (``VALIDATION``), so the fire is recorded and visible, and never runs."""
        definition = self._registry.get(workflow_id)
        run_input = spec.input
        error = None
        plan = EMPTY
        cancel_on: tuple[storage.CancelRule, ...] = ()
        if definition is not None:
            try:
                if definition.input_validator is not None:
                    run_input = definition.input_validator(run_input)
                plan = plan_for(definition, run_input)
                cancel_on = triggers.cancel_rules(definition, run_input)
            except KeyResolutionError as exc:
                error = rt_errors.error_dict("VALIDATION", str(exc), name="ValidationError")
            except Exception as exc:  # the user's validator: any failure rejects the input
                reason = str(exc) or type(exc).__name__
                error = rt_errors.error_dict(
                    "VALIDATION", f"input rejected by workflow {workflow_id!r}: {reason}",
                    name="ValidationError")
        groups = plan.groups if spec.overlap == "allow" else (
            *plan.groups, schedule_group(name))
        flow = Plan(groups, plan.throttle, None)  # debounce is for submissions, not fires
        ttl = None if definition is None else definition.start_timeout
        return storage.CreateRun(
            run_id=rs.run_id(name, due),
            workflow_id=workflow_id,
            created_at=now,
            input=run_input,
            workflow_version=None if definition is None else definition.version,
            version_pinned=definition is not None and definition.pinned,
            tags=() if definition is None else definition.tags,
            triggered_by="schedule",
            flow=flow.to_json(),
            throttle_key=flow.throttle,
            expires_at=None if ttl is None or error is not None else now + ttl,
            status=storage.RunStatus.FAILED if error is not None else storage.RunStatus.PENDING,
            error=error,
            finished_at=now if error is not None else None,
            cancel_on=cancel_on if error is None else (),
        )

    async def _start(self, run: storage.RunRecord) -> storage.RunRecord:
        """Hand a new run to admission; returns its record as it stands."""
        if run.is_terminal:
            log.warning("run.failed", run_id=run.run_id, workflow_id=run.workflow_id,
                        error_code="VALIDATION")
            return run
        log.info("run.submitted", run_id=run.run_id, workflow_id=run.workflow_id,
                 triggered_by="schedule")
        if run.expires_at is not None:
            self._timer_stored(run.expires_at)
        return await self._admission.offer(run)

    async def _replace(
        self, name: str, newcomer: storage.RunRecord, previous: storage.RunRecord | None
    ) -> None:
        """``cancel_other``: cancel the schedule's runs that have not ended, but ``newcomer``."""
        group = schedule_group(name)
        victims = set(self._admission.gate.holders(group))
        victims.update(self._admission.gate.waiting_in(group))
        if previous is not None:
            victims.add(previous.run_id)
        victims.discard(newcomer.run_id)
        reason = f"replaced by run {newcomer.run_id} of schedule {name!r} (overlap cancel_other)"
        for run_id in sorted(victims):
            run = await self._storage.get_run(run_id)
            if run is not None and not run.is_terminal:
                await self._cancel(run, reason, REPLACED)

    # ------------------------------------------------------------------ the service

    async def list(self) -> JSONDict:
        return {"schedules": [views.schedule(s) for s in await self._storage.list_schedules()]}

    async def create(self, r: service.ScheduleCreate) -> JSONDict:
        where = "schedule_create"
        try:
            name = rs.check_name(where, r.name)
            spec = rs.make_spec(where, cron=r.cron, every=r.every, at=r.at,
                                timezone=r.timezone, input=r.input, overlap=r.overlap,
                                jitter=r.jitter)
        except rs.ScheduleError as exc:
            raise errors.InvalidParams(exc.option, exc.expected, repr(exc.value)) from exc
        self._check_size(spec.input)
        definition = self._registry.get(r.workflow_id)
        if definition is None:
            raise errors.NotFound("workflow", r.workflow_id)
        if definition.input_validator is not None:
            try:
                definition.input_validator(spec.input)
            except Exception as exc:
                raise errors.ValidationFailed(r.workflow_id, str(exc) or type(exc).__name__
                                              ) from exc
        async with self._lock(name):
            current = await self._storage.get_schedule(name)
            if current is not None and current.source is storage.ScheduleSource.CODE:
                raise errors.InvalidParams(
                    "name", "a name no schedule declared in code has",
                    f"{name!r} (declared on workflow {current.workflow_id!r})")
            now = self._clock.now()
            next_due = spec.first_due(now)
            old = None if current is None else _spec_or_none(current)
            if current is not None and old is not None and old.same_rule(spec):
                next_due = current.next_due_at
            if next_due is None and spec.kind == "at":
                raise errors.InvalidParams("at", "a time in the future", rs.iso(spec.at or 0))
            stored = await self._storage.execute(
                self._upsert(name, r.workflow_id, spec, now, next_due,
                             storage.ScheduleSource.API))
        if stored.next_fire_at is not None and not stored.paused:
            self._timer_stored(stored.next_fire_at)
        log.info("schedule.created", schedule=name, workflow_id=r.workflow_id,
                 rule=spec.describe())
        return views.schedule(stored)

    async def delete(self, r: service.ScheduleDelete) -> JSONDict:
        async with self._lock(r.name):
            current = await self._get(r.name)
            if current.source is storage.ScheduleSource.CODE:
                raise errors.InvalidParams(
                    "name", "a schedule created with schedule_create (one declared in code "
                    "is removed from the code, or paused)", repr(r.name))
            deleted = await self._storage.execute(storage.DeleteSchedule(r.name))
        log.info("schedule.deleted", schedule=r.name, workflow_id=current.workflow_id)
        return {"deleted": deleted}

    async def pause(self, r: service.SchedulePause) -> JSONDict:
        async with self._lock(r.name):
            current = await self._get(r.name)
            if current.paused:
                return views.schedule(current)
            stored = await self._storage.execute(
                storage.PauseSchedule(r.name, True, self._clock.now()))
        log.info("schedule.paused", schedule=r.name, workflow_id=current.workflow_id)
        return views.schedule(stored)

    async def resume(self, r: service.ScheduleResume) -> JSONDict:
        """Fires that came due while paused are not made up: the next one after now."""
        async with self._lock(r.name):
            current = await self._get(r.name)
            if not current.paused:
                return views.schedule(current)
            spec = self._spec(current)
            now = self._clock.now()
            next_due = spec.due_after(current.next_due_at, now)
            next_fire = None if next_due is None else spec.fire_at(r.name, next_due)
            stored = await self._storage.execute(storage.PauseSchedule(
                r.name, False, now, next_due_at=next_due, next_fire_at=next_fire))
        if next_fire is not None:
            self._timer_stored(next_fire)
        log.info("schedule.resumed", schedule=r.name, workflow_id=current.workflow_id,
                 next_fire_at=next_fire)
        return views.schedule(stored)

    async def trigger(self, r: service.ScheduleTrigger) -> JSONDict:
        """Fire now (also while paused), whatever the overlap policy drops; its run waits its
        turn in the schedule's group like any other. The next due time is unchanged."""
        async with self._lock(r.name):
            current = await self._get(r.name)
            now = self._clock.now()
            run = await self._fire(current, self._spec(current), now, now)
        if run is None:  # deleted meanwhile
            raise errors.NotFound("schedule", r.name)
        return {"runs": [views.run(run)]}

    async def backfill(self, r: service.ScheduleBackfill) -> JSONDict:
        """A run for every due time in ``[start, end]`` (inclusive), created together in due
        order; one already made (by a fire or an earlier backfill) is returned as it is."""
        start, end = float(r.start), float(r.end)
        now = self._clock.now()
        if end < start:
            raise errors.InvalidParams("end", "a time at or after start", rs.iso(end))
        if end > now:
            raise errors.InvalidParams("end", "a time that is not in the future", rs.iso(end))
        current = await self._get(r.name)
        spec = self._spec(current)
        anchor = current.next_due_at if current.next_due_at is not None else (
            current.last_fire_at)
        dues = list(itertools.islice(spec.due_between(anchor, start, end), MAX_BACKFILL + 1))
        if len(dues) > MAX_BACKFILL:
            raise errors.InvalidParams(
                "end", f"a range with at most {MAX_BACKFILL} due times", f"more from {r.start}")
        batch: list[storage.WriteOp[Any]] = [
            self._new_run(r.name, current.workflow_id, spec, due, now) for due in dues
        ]
        made: list[storage.RunCreated] = await self._storage.commit(batch) if batch else []
        runs = [await self._start(c.run) if c.created else c.run for c in made]
        log.info("schedule.backfilled", schedule=r.name, workflow_id=current.workflow_id,
                 runs=len(made), created=sum(c.created for c in made))
        return {"runs": views.runs(runs)}

    # ------------------------------------------------------------------ helpers

    def _upsert(
        self, name: str, workflow_id: str, spec: rs.ScheduleSpec, now: float,
        next_due: float | None, source: storage.ScheduleSource,
    ) -> storage.UpsertSchedule:
        return storage.UpsertSchedule(
            name, workflow_id, spec.to_json(), now,
            next_fire_at=None if next_due is None else spec.fire_at(name, next_due),
            next_due_at=next_due, source=source,
        )

    async def _get(self, name: str) -> storage.ScheduleRecord:
        found = await self._storage.get_schedule(name)
        if found is None:
            raise errors.NotFound("schedule", name)
        return found

    def _spec(self, schedule: storage.ScheduleRecord) -> rs.ScheduleSpec:
        spec = _spec_or_none(schedule)
        if spec is None:
            raise errors.InternalError(f"schedule {schedule.name!r} has an unreadable spec")
        return spec

    def _check_size(self, value: Any) -> None:
        size = len(orjson.dumps(value))
        if size > self._max_payload_bytes:
            raise errors.InvalidParams(
                "input", f"JSON of at most {self._max_payload_bytes} bytes "
                "(limits.max_payload_bytes)", f"{size} bytes")

    @contextlib.asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        async with lock:
            yield

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="schedule")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Nothing was recorded: the schedule's timer is leased, so it fires again.
            log.warning("schedule.fire_failed", error=repr(task.exception()))

    async def idle(self) -> None:
        """Wait until every fire in progress is done (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _spec_or_none(schedule: storage.ScheduleRecord) -> rs.ScheduleSpec | None:
    if not isinstance(schedule.spec, dict):
        log.error("schedule.unreadable", schedule=schedule.name, spec=schedule.spec)
        return None
    try:
        return rs.ScheduleSpec.from_json(schedule.spec)
    except rs.ScheduleError as exc:
        log.error("schedule.unreadable", schedule=schedule.name, error=str(exc))
        return None
