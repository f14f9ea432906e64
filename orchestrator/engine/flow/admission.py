"""Admission: which pending run may start now (SPEC §2a).

Every run that becomes due passes here before it gets an actor: at submit, when its delayed,
debounced or throttled start time fires, at recovery, and when a slot of one of its groups
frees. A run without flow options goes straight through. Otherwise, in order:

1. a run past its time to live ends ``cancelled`` (``EXPIRED``) without ever holding a slot;
2. a throttled run gets a durable start timer at the first time its window has room and waits
   ``pending``, holding no slot;
3. a run whose concurrency group is full is queued (``queue``), ends ``cancelled``
   (``cancel-newest``, code ``CONCURRENCY_LIMIT``), or cancels the group's holders and queued
   runs (``cancel-in-progress``, code ``CONCURRENCY_REPLACED``) and goes first.

Everything decided is either in storage already (the run's plan, its start and expiry timers,
its status) or derived from it at start (:meth:`Admission.rebuild`), so a kill -9 at any moment
loses no slot and lets no group run above its limit afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any

import structlog

import storage
from orchestrator.engine import bridge
from orchestrator.engine.flow.concurrency import Entry, Gate, fairness_key
from orchestrator.engine.flow.plan import EMPTY, GroupId, Limits, Plan, group_name
from orchestrator.engine.flow.throttle import Windows, rule_of
from orchestrator.engine.holds import Holds
from orchestrator.engine.messages import Cancel
from runtime import errors as rt_errors
from runtime.clock import Clock
from runtime.workflow import Registry, WorkflowDefinition

log = structlog.get_logger("wf.flow")

_HOLDING = (storage.RunStatus.RUNNING, storage.RunStatus.WAITING, storage.RunStatus.PAUSED)

Start = Callable[[storage.RunRecord], None]
CancelRun = Callable[[str, Cancel], None]
Finished = Callable[[storage.RunRecord], None]


def plan_of(run: storage.RunRecord) -> Plan:
    return Plan.from_json(run.flow) if run.flow is not None else EMPTY


class Admission:
    def __init__(
        self,
        *,
        storage_: storage.Storage,
        clock: Clock,
        registry: Registry,
        start: Start,
        cancel: CancelRun,
        is_started: Callable[[str], bool],
        timer_stored: Callable[[float], None],
        on_finished: Finished,
        holds: Holds | None = None,
    ) -> None:
        self._storage = storage_
        self._holds = holds if holds is not None else Holds()
        self._clock = clock
        self._registry = registry
        self._start_run = start
        self._cancel_run = cancel
        self._is_started = is_started
        self._timer_stored = timer_stored
        self._on_finished = on_finished
        self.limits = Limits(registry)
        self.gate = Gate(self.limits)
        self.windows = Windows()
        self._queued: dict[str, storage.RunRecord] = {}  # queued on a group: the record
        self._debounced: dict[tuple[str, str], storage.RunRecord] = {}
        self._throttled: dict[str, float] = {}  # run id -> start time the throttle gave it
        self._held: dict[str, storage.RunRecord] = {}  # due, but kept pending by a pause
        self._busy: set[str] = set()  # a decision about the run is being committed
        self._debounce_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Many daemons (SPEC §13): this daemon's id once admission is decided in the database
        # (``share``); None with one daemon, whose decisions stay in memory as above.
        self.daemon_id: str | None = None
        # Told when this daemon no longer drives a run it offered (queued, throttled, taken
        # by another daemon): an actor started for it later must claim it first.
        self.disown: Callable[[str], None] = lambda run_id: None
        self.rules = self.limits.rules(
            (d.id, rule_of(d.throttle)) for d in registry if d.throttle is not None)

    # ------------------------------------------------------------------ start-up

    def share(self, daemon_id: str) -> None:
        """Decide admission in the database from now on (many daemons on one database): a run
        with concurrency groups or a throttle is admitted by ``storage.AdmitRuns``, atomically
        across daemons; the in-memory gate then only mirrors this daemon's own holders (the
        invoke deadlock check, ``get`` and ``stats`` read the groups from the database)."""
        self.daemon_id = daemon_id

    async def rebuild(self, runs: Iterable[storage.RunRecord]) -> None:
        """Derive every group's holders, the debounce keys and the throttle windows from
        storage: runs ``running``/``waiting``/``paused`` hold their groups' slots."""
        periods = [d.throttle.period_seconds for d in self._registry if d.throttle is not None]
        if periods:
            since = self._clock.now() - max(periods)
            for key, at in await self._storage.throttle_starts(since):
                self.windows.record(key, at)
        for run in runs:
            plan = plan_of(run)
            if run.status in _HOLDING and plan.groups:
                self.gate.hold(run.run_id, plan.groups)
            elif run.status is storage.RunStatus.PENDING and plan.debounce is not None:
                self._debounced[(run.workflow_id, plan.debounce)] = run

    # ------------------------------------------------------------------ runs that are due

    async def offer(self, run: storage.RunRecord) -> storage.RunRecord:
        """``run`` (pending, due now) starts, waits, or ends; returns its record as it stands."""
        if self._holds.blocks_start(run) is not None:
            self.hold(run)
            return run
        if run.flow is None and run.expires_at is None:
            self._start_run(run)
            return run
        if run.run_id in self._busy or self._is_started(run.run_id) or self.gate.holds(
            run.run_id
        ):
            return run
        now = self._clock.now()
        if run.expires_at is not None and now >= run.expires_at:
            return await self._end(run, "EXPIRED", "the run did not start before its time to live")
        plan = plan_of(run)
        definition = self._registry.get(run.workflow_id)
        if plan.debounce is not None:
            current = self._debounced.get((run.workflow_id, plan.debounce))
            if current is not None and current.run_id == run.run_id:
                del self._debounced[(run.workflow_id, plan.debounce)]
        if definition is None:  # its actor fails it (WORKFLOW_NOT_FOUND)
            self._start_run(run)
            return run
        if self.daemon_id is not None and (plan.groups or plan.throttle is not None):
            return await self._offer_shared(run, plan)
        if plan.throttle is not None and definition.throttle is not None:
            at = self.windows.next_start(plan.throttle, definition.throttle, now, run.run_id)
            if at > now:
                return await self._delay(run, at, plan.throttle)
        if not plan.groups:
            self._begin(run, plan, definition)
            return run
        full = self.gate.full(plan.groups)
        front = False
        if full is not None:
            strategy = self.limits.strategy(run.workflow_id, full)
            if strategy == "cancel-newest":
                return await self._end(
                    run, "CONCURRENCY_LIMIT",
                    f"concurrency group {group_name(full)} is full "
                    f"(limit {self.limits.limit(full)}, strategy cancel-newest)",
                )
            if strategy == "cancel-in-progress":
                front = True
                self._replace(full, run)
        self._queued[run.run_id] = run
        entry = Entry(run.run_id, run.workflow_id, run.priority, run.number, plan.groups,
                      fairness_key(plan.groups), front=front)
        self._start_entries(self.gate.admit(entry))
        return run

    async def _offer_shared(self, run: storage.RunRecord, plan: Plan) -> storage.RunRecord:
        """Many daemons: the database decides (``storage.AdmitRuns``) and this daemon starts
        what it admitted, the offered run and any queued runs the same decision took."""
        assert self.daemon_id is not None
        strategies = tuple(self.limits.strategy(run.workflow_id, g) for g in plan.groups)
        self._busy.add(run.run_id)
        try:
            result = await self._storage.execute(storage.AdmitRuns(
                self.daemon_id, self._clock.now(), self.rules, offer=run.run_id,
                strategies=strategies))
        finally:
            self._busy.discard(run.run_id)
        if result.group is not None and (result.replaced_holders or result.replaced_queued):
            reason = (f"replaced by run {run.run_id} "
                      f"(concurrency group {group_name(result.group)})")
            for run_id in result.replaced_holders:
                self._cancel_run(run_id, Cancel(reason, True, code="CONCURRENCY_REPLACED"))
            for queued in result.replaced_queued:
                self._spawn(self._end(queued, "CONCURRENCY_REPLACED", reason))
        mine = self._start_admitted(result.admitted, run.run_id)
        if mine is None:
            self.disown(run.run_id)
        if result.offered == "refused" and result.group is not None:
            return await self._end(
                run, "CONCURRENCY_LIMIT",
                f"concurrency group {group_name(result.group)} is full "
                f"(limit {self.limits.limit(result.group)}, strategy cancel-newest)",
            )
        if result.offered == "throttled" and result.throttled_until is not None:
            return await self._delay_shared(run, result.throttled_until)
        return mine or run

    def _start_admitted(self, runs: Iterable[storage.RunRecord], offered: str = ""
                        ) -> storage.RunRecord | None:
        """Start the runs the database admitted for this daemon; the offered one's record."""
        mine = None
        for admitted in runs:
            groups = plan_of(admitted).groups
            if groups:
                self.gate.hold(admitted.run_id, groups)
            self._queued.pop(admitted.run_id, None)
            self._throttled.pop(admitted.run_id, None)
            self._start_run(admitted)
            if admitted.run_id == offered:
                mine = admitted
        return mine

    async def _delay_shared(self, run: storage.RunRecord, at: float) -> storage.RunRecord:
        """Throttled across daemons: wait ``pending`` for ``at`` with a durable start timer
        (whichever daemon fires it offers the run again; no turn is reserved)."""
        self._throttled[run.run_id] = at
        self._busy.add(run.run_id)
        try:
            moved = await self._storage.execute(
                storage.ReschedulePending(run.run_id, at=self._clock.now(), scheduled_at=at))
        finally:
            self._busy.discard(run.run_id)
        self._timer_stored(at)
        return moved

    async def pump_shared(self, groups: tuple[GroupId, ...] = (),
                          release: tuple[str, ...] = ()) -> None:
        """Many daemons: start queued runs where a slot may have freed (``groups``), or in
        every group with due queued runs (none given: the periodic safety net)."""
        if self.daemon_id is None:
            return
        result = await self._storage.execute(storage.AdmitRuns(
            self.daemon_id, self._clock.now(), self.rules, pump=groups, release=release,
            pump_queued=not groups))
        self._start_admitted(result.admitted)

    def _begin(self, run: storage.RunRecord, plan: Plan, definition: WorkflowDefinition) -> None:
        """Start ``run`` now (its slots, if any, are already held)."""
        self._queued.pop(run.run_id, None)
        self._throttled.pop(run.run_id, None)
        if plan.throttle is not None and definition.throttle is not None:
            self.windows.record(plan.throttle, self._clock.now(), run.run_id)
        self._start_run(run)

    def _start_entries(self, entries: Iterable[Entry]) -> None:
        now = self._clock.now()
        for entry in entries:
            run = self._queued.pop(entry.run_id, None)
            if run is None:
                continue
            if self._holds.blocks_start(run) is not None:  # paused while it was queued
                self._start_entries(self.gate.release(run.run_id))
                self._held[run.run_id] = run
                continue
            definition = self._registry.get(run.workflow_id)
            plan = plan_of(run)
            throttle = None if definition is None else definition.throttle
            if plan.throttle is not None and throttle is not None:
                at = self.windows.next_start(plan.throttle, throttle, now, run.run_id)
                if at > now:  # its turn came, but the throttle says later: give the slot back
                    self._start_entries(self.gate.release(run.run_id))
                    self._spawn(self._delay(run, at, plan.throttle))
                    continue
            if run.expires_at is not None and now >= run.expires_at:
                self._start_entries(self.gate.release(run.run_id))
                self._spawn(self._end(run, "EXPIRED", "the run did not start before its time "
                                                     "to live"))
                continue
            if definition is None:
                self._start_run(run)
            else:
                self._begin(run, plan, definition)

    def _replace(self, group: GroupId, newcomer: storage.RunRecord) -> None:
        """``cancel-in-progress``: cancel the group's holders and the runs queued on it."""
        reason = f"replaced by run {newcomer.run_id} (concurrency group {group_name(group)})"
        for run_id in self.gate.holders(group):
            self._cancel_run(run_id, Cancel(reason, True, code="CONCURRENCY_REPLACED"))
        for run_id in self.gate.waiting_in(group):
            queued = self._queued.get(run_id)
            if queued is not None:
                self.gate.remove(run_id)
                self._spawn(self._end(queued, "CONCURRENCY_REPLACED", reason))

    async def _delay(self, run: storage.RunRecord, at: float, window: str) -> storage.RunRecord:
        """Wait ``pending`` for ``at`` with a durable start timer, holding no slot. The start
        is reserved in the throttle window now, so the next run gets the next turn (runs
        throttled on one key start in submission order, one turn apart)."""
        self.windows.reserve(window, run.run_id, at)
        self._throttled[run.run_id] = at
        self._busy.add(run.run_id)
        try:
            moved = await self._storage.execute(
                storage.ReschedulePending(run.run_id, at=self._clock.now(), scheduled_at=at)
            )
        finally:
            self._busy.discard(run.run_id)
        self._timer_stored(at)
        return moved

    async def _end(self, run: storage.RunRecord, code: str, message: str) -> storage.RunRecord:
        """End a run that never started (``cancelled`` with ``code``)."""
        self._busy.add(run.run_id)
        self.gate.remove(run.run_id)
        self._queued.pop(run.run_id, None)
        self._held.pop(run.run_id, None)
        if self._throttled.pop(run.run_id, None) is not None:
            throttle = plan_of(run).throttle
            if throttle is not None:
                self.windows.release(throttle, run.run_id)
        try:
            error = rt_errors.error_dict(code, message, name="RunCancelled")
            ended = await self._storage.execute(
                storage.EndPending(run.run_id, self._clock.now(),
                                   storage.RunStatus.CANCELLED, error,
                                   parent_error=bridge.child_error(run.run_id, "cancelled", error))
            )
        finally:
            self._busy.discard(run.run_id)
        if ended is None:
            return run
        log.info("run.cancelled", run_id=run.run_id, workflow_id=run.workflow_id,
                 error_code=code)
        self._on_finished(ended)
        return ended

    # ------------------------------------------------------------------ events of a run's life

    def admit_new(self, run: storage.RunRecord) -> None:
        """A run created by another run (``ctx.invoke``): start, queue or delay it."""
        if run.scheduled_at is None:
            if self._holds.blocks_start(run) is not None:
                self.hold(run)
            elif run.flow is None and run.expires_at is None:
                self._start_run(run)
            else:
                self._spawn(self.offer(run))
        else:
            self._timer_stored(run.scheduled_at)
        if run.expires_at is not None:
            self._timer_stored(run.expires_at)

    def on_start_timer(self, run_id: str) -> None:
        """A delayed, debounced or throttled start came due."""
        if run_id not in self._busy:
            self._spawn(self._offer_stored(run_id))

    def on_expire_timer(self, run_id: str) -> None:
        if run_id not in self._busy and not self._is_started(run_id):
            self._spawn(self._expire(run_id))

    async def _offer_stored(self, run_id: str) -> None:
        run = await self._storage.get_run(run_id)
        if run is not None and run.status is storage.RunStatus.PENDING:
            await self.offer(run)

    async def _expire(self, run_id: str) -> None:
        run = self._queued.get(run_id) or await self._storage.get_run(run_id)
        if (run is None or run.status is not storage.RunStatus.PENDING
                or self._is_started(run_id) or self.gate.holds(run_id)):
            return
        await self._end(run, "EXPIRED", "the run did not start before its time to live")

    def pump(self) -> None:
        """Start whatever queued runs every group has room for (after start-up: a limit the
        deploy raised starts queued runs at once)."""
        if self.daemon_id is not None:
            self._spawn(self.pump_shared())
            return
        self._start_entries(self.gate.pump())

    def ended(self, run: storage.RunRecord) -> None:
        """``run`` reached a terminal status: its slots go to the next queued runs, and it
        waits for nothing any more (a run cancelled while queued leaves no entry behind)."""
        self._held.pop(run.run_id, None)
        self._queued.pop(run.run_id, None)
        self.gate.remove(run.run_id)
        if self.daemon_id is not None:
            self._throttled.pop(run.run_id, None)
            groups = plan_of(run).groups
            if groups:  # a slot may have freed: whoever is queued starts, here
                self.gate.release(run.run_id)
                self._spawn(self.pump_shared(groups))
            return
        if self.gate.holds(run.run_id):
            self._start_entries(self.gate.release(run.run_id))

    # ------------------------------------------------------------------ pauses

    def hold(self, run: storage.RunRecord) -> None:
        """Keep the pending ``run`` pending (it, or its workflow, is paused): it leaves the
        queues and gives back any slot admission took for it; a delayed one is offered again
        when its start timer fires. :meth:`release` offers it again."""
        run_id = run.run_id
        self.gate.remove(run_id)
        self._queued.pop(run_id, None)
        plan = plan_of(run)
        if self.daemon_id is not None and plan.groups:
            # Admitted, then held back by a pause before it started: its slots go back.
            self.gate.release(run_id)
            self.disown(run_id)
            self._spawn(self.pump_shared(plan.groups, release=(run_id,)))
        elif self.gate.holds(run_id):  # let start, then held back by its actor: not started
            self._start_entries(self.gate.release(run_id))
        if run.scheduled_at is None or run.scheduled_at <= self._clock.now():
            self._held[run_id] = run

    def hold_workflow(self, workflow_id: str) -> None:
        """The workflow was paused: its runs queued on a concurrency group stay pending."""
        for run in [r for r in self._queued.values() if r.workflow_id == workflow_id]:
            self.hold(run)

    async def release(self, run: storage.RunRecord) -> storage.RunRecord:
        """A pause that held the pending ``run`` was lifted: offer it again if it is due and
        admission is not deciding or queueing it already."""
        run_id = run.run_id
        held = self._held.pop(run_id, None)
        if held is None and (
            run_id in self._busy or self._is_started(run_id) or self.gate.holds(run_id)
            or self.gate.queued(run_id) is not None
            or (run.scheduled_at is not None and run.scheduled_at > self._clock.now())
        ):
            return run
        return await self.offer(run)

    async def release_workflow(self, workflow_id: str) -> int:
        """The workflow was resumed: offer its held runs again; how many there were."""
        runs = [r for r in self._held.values() if r.workflow_id == workflow_id]
        for run in runs:
            await self.release(run)
        return len(runs)

    def forget(self, run_id: str) -> None:
        """A pending run that its actor will end (a cancel of a run with a journal): it
        leaves every queue."""
        self._held.pop(run_id, None)
        self._queued.pop(run_id, None)
        self.gate.remove(run_id)

    async def cancel_unstarted(
        self, run: storage.RunRecord, reason: str | None, *, code: str = "CANCELLED"
    ) -> bool:
        """Cancel a pending run that has not started (queued, delayed, debounced, held by a
        pause): it never runs (its error has ``code``). False when it has started (the
        caller cancels it through its actor)."""
        if self._is_started(run.run_id) or self.gate.holds(run.run_id):
            return False
        plan = plan_of(run)
        if plan.debounce is not None:
            self._debounced.pop((run.workflow_id, plan.debounce), None)
        ended = await self._end(run, code, reason or "run cancelled")
        return ended.is_terminal

    # ------------------------------------------------------------------ debounce

    @contextlib.asynccontextmanager
    async def debounce_guard(self, workflow_id: str, key: str) -> AsyncIterator[None]:
        """Hold while deciding between collapsing into a key's pending run and creating it:
        concurrent submissions of one key make one run."""
        name = (workflow_id, key)
        lock, users = self._debounce_locks.get(name, (asyncio.Lock(), 0))
        self._debounce_locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._debounce_locks[name]
            if users == 1:
                del self._debounce_locks[name]
            else:
                self._debounce_locks[name] = (lock, users - 1)

    def debounce_target(self, workflow_id: str, key: str) -> storage.RunRecord | None:
        """The pending run a submission with this debounce key collapses into, if any."""
        return self._debounced.get((workflow_id, key))

    def debounced(self, run: storage.RunRecord, key: str) -> None:
        """``run`` was just created as the pending run of a debounce key."""
        self._debounced[(run.workflow_id, key)] = run

    async def collapse(
        self, run: storage.RunRecord, definition: WorkflowDefinition, run_input: Any
    ) -> storage.RunRecord | None:
        """Fold a submission into the pending debounced ``run``: its start moves to now +
        period (never past its first submission + max_wait), its input follows ``mode``.
        None when the run started meanwhile (the caller creates a new run)."""
        spec = definition.debounce
        assert spec is not None
        now = self._clock.now()
        due = now + spec.period_seconds
        if spec.max_wait_seconds is not None:
            due = min(due, run.created_at + spec.max_wait_seconds)
        expires_at: float | storage.ops.Unset | None = storage.UNSET
        if run.expires_at is not None:
            ttl = run.expires_at - (run.scheduled_at or run.created_at)
            expires_at = due + ttl
        self._busy.add(run.run_id)
        try:
            moved = await self._storage.execute(storage.ReschedulePending(
                run.run_id, at=now, scheduled_at=due, expires_at=expires_at,
                input=run_input if spec.mode == "trailing" else storage.UNSET,
            ))
        except storage.InvalidOperation:
            return None
        finally:
            self._busy.discard(run.run_id)
        plan = plan_of(moved)
        if plan.debounce is not None:
            self._debounced[(moved.workflow_id, plan.debounce)] = moved
        self._timer_stored(due)
        return moved

    # ------------------------------------------------------------------ operator moves

    async def reschedule(self, run: storage.RunRecord, at: float | None) -> storage.RunRecord:
        """Move a pending run's start to ``at`` (None: now); its expiry moves with it (the
        time to live counts from when the run is due)."""
        if self._is_started(run.run_id) or self.gate.holds(run.run_id):
            raise storage.InvalidOperation(f"run {run.run_id!r} has started")
        now = self._clock.now()
        expires_at: float | storage.ops.Unset | None = storage.UNSET
        if run.expires_at is not None:
            ttl = run.expires_at - (run.scheduled_at or run.created_at)
            expires_at = (at if at is not None else now) + ttl
        self.gate.remove(run.run_id)
        self._queued.pop(run.run_id, None)
        self._busy.add(run.run_id)
        try:
            moved = await self._storage.execute(storage.ReschedulePending(
                run.run_id, at=now, scheduled_at=at if at is not None and at > now else None,
                expires_at=expires_at,
            ))
        finally:
            self._busy.discard(run.run_id)
        plan = plan_of(moved)
        if plan.debounce is not None and (moved.workflow_id, plan.debounce) in self._debounced:
            self._debounced[(moved.workflow_id, plan.debounce)] = moved
        if moved.scheduled_at is None:
            return await self.offer(moved)
        self._timer_stored(moved.scheduled_at)
        return moved

    def waits_for_slot(self, run: storage.RunRecord) -> bool:
        """A pending run whose concurrency groups have no room now (at recovery: it was
        queued, not started). With many daemons: a run with groups or a throttle that the
        database has not admitted (one it admitted may have started before its daemon died:
        it restarts as any pending run does, counting a recovery, and holds its slots)."""
        plan = plan_of(run)
        if self.daemon_id is not None:
            return run.status is storage.RunStatus.PENDING and run.admitted_at is None and (
                bool(plan.groups) or plan.throttle is not None)
        return bool(plan.groups) and self.gate.full(plan.groups) is not None

    async def deadlock(self, chain: Iterable[str], plan: Plan) -> GroupId | None:
        """The group of ``plan`` that the runs of ``chain`` (an invoking run and its
        ancestors, all waiting on the new child) hold to its limit: the child could never
        start. None when there is none. With many daemons the holders are the database's
        (an ancestor may be driven by another daemon); with one, the gate's (no query)."""
        ancestors = set(chain)
        limited = [(g, limit) for g in plan.groups if (limit := self.limits.limit(g)) is not None]
        if self.daemon_id is None or not limited:
            holders = {g: self.gate.holders(g) for g, _ in limited}
        else:
            found = await self._storage.concurrency_groups(
                self._clock.now(), [g for g, _ in limited])
            holders = {s.group: frozenset(s.holders) for s in found}
        for group, limit in limited:
            if len(holders.get(group, frozenset()) & ancestors) >= limit:
                return group
        return None

    # ------------------------------------------------------------------ reporting

    async def why_pending(self, run: storage.RunRecord) -> dict[str, Any]:
        """What a pending run waits for (``wf show``, ``get``). With many daemons a queued
        run's group is read from the database (it may have been queued by another daemon)."""
        now = self._clock.now()
        out: dict[str, Any] = {}
        plan = plan_of(run)
        if run.scheduled_at is not None and run.scheduled_at > now:
            if run.run_id in self._throttled:
                out["throttled_until"] = run.scheduled_at
            elif plan.debounce is not None:
                out["debounced_until"] = run.scheduled_at
            else:
                out["delayed_until"] = run.scheduled_at
        if self.daemon_id is not None:
            blocked = await self._blocked_shared(run, plan, now)
            if blocked is not None:
                out["concurrency"] = blocked
        elif (entry := self.gate.queued(run.run_id)) is not None:
            full = self.gate.full(entry.groups)
            if full is not None:
                out["concurrency"] = {
                    "group": group_name(full),
                    "limit": self.limits.limit(full),
                    "holders": len(self.gate.holders(full)),
                }
        if run.expires_at is not None:
            out["expires_at"] = run.expires_at
        if self._holds.is_paused(run.run_id):
            out["paused"] = True
        if run.workflow_id in self._holds.workflows:
            out["paused_workflow"] = True
        return out

    async def _blocked_shared(self, run: storage.RunRecord, plan: Plan, now: float
                              ) -> dict[str, Any] | None:
        """Many daemons: the first full group of a due, unadmitted ``run``, as the database
        counts it (what the next pump would find), or None."""
        if (not plan.groups or run.admitted_at is not None or run.paused
                or (run.scheduled_at is not None and run.scheduled_at > now)):
            return None
        for state in await self._storage.concurrency_groups(now, plan.groups):
            limit = self.limits.limit(state.group)
            if limit is not None and len(state.holders) >= limit:
                return {"group": group_name(state.group), "limit": limit,
                        "holders": len(state.holders)}
        return None

    async def stats(self) -> dict[str, Any]:
        """Counters for ``wf stats``; with many daemons the groups (holders, queued runs) are
        the database's, for the whole cluster."""
        if self.daemon_id is None:
            groups = self.gate.stats()
        else:
            groups = {
                group_name(s.group): {"holders": len(s.holders), "queued": s.queued,
                                      "limit": self.limits.limit(s.group) or 0}
                for s in await self._storage.concurrency_groups(self._clock.now())}
        return {"groups": groups, "debounced": len(self._debounced), "held": len(self._held)}

    # ------------------------------------------------------------------ tasks

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a decision of the engine's as an owned task (failures are logged; the stored
        state lets recovery or a timer take it up again)."""
        self._spawn(coro)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="admission")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Storage trouble: the run stays pending, and recovery or its timer offers it again.
            log.warning("flow.decision_failed", error=repr(task.exception()))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
