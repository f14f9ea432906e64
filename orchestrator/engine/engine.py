"""The engine: it receives its collaborators and serves every method of the service.

``Engine(storage, registry=..., settings=...)`` opens nothing itself (the composition root in
``orchestrator.daemon.compose`` takes the lock, opens the configured storage, imports the
workflow modules and builds the pools). ``async with engine:`` recovers every non-terminal run,
fires overdue timers oldest first and arms the timer task; leaving it stops the actors (within
``shutdown_grace``) and the timers. Storage stays the caller's to close.

Each request type of :mod:`orchestrator.api.service` has one handler here; :meth:`Engine.call`
validates a request built in process exactly as the socket server validates one from the wire,
and translates storage errors at one boundary (:func:`orchestrator.api.errors.from_storage`).
Everything acknowledged is committed first.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import structlog

import storage
from orchestrator import logs
from orchestrator.api import errors, protocol, service, views
from orchestrator.api.service import JSONDict
from orchestrator.engine import bridge, export, replay, spans, triggers, versions
from orchestrator.engine.cluster import ClusterLoop
from orchestrator.engine.events import EventIntake
from orchestrator.engine.flow.admission import Admission
from orchestrator.engine.flow.plan import Plan
from orchestrator.engine.holds import Holds
from orchestrator.engine.journal_edits import JournalEdits
from orchestrator.engine.lease import LeaseKeeper
from orchestrator.engine.messages import Cancel, Resolve
from orchestrator.engine.new_runs import NewRuns
from orchestrator.engine.operations import RunOperations
from orchestrator.engine.ratelimits import StoredRateLimiter
from orchestrator.engine.retention import MAX_INDEX_MERGES, STATUS_GROUPS, Retention
from orchestrator.engine.schedules import Schedules
from orchestrator.engine.settings import Settings
from orchestrator.engine.streams import Reread
from orchestrator.engine.supervisor import Supervisor
from orchestrator.engine.timers import Timers
from runtime.clock import Clock, SystemClock
from runtime.facts import ProcessRunner
from runtime.workflow import Registry, WorkflowDefinition
from storage.instruments import NO_INSTRUMENT, Instrument

log = structlog.get_logger("wf")

R = TypeVar("R")
_ENDED = frozenset(str(s) for s in storage.TERMINAL_STATUSES)
Handler = Callable[[Any, Any], Awaitable[Any]]
StreamHandler = Callable[[Any, Any], AsyncIterator[JSONDict]]

_HANDLERS: dict[type[service.Request[Any]], Handler] = {}
_STREAMS: dict[type[service.Request[Any]], StreamHandler] = {}


def handles(request: type[service.Request[Any]]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[request] = fn
        return fn

    return register


def streams(request: type[service.StreamRequest]) -> Callable[[StreamHandler], StreamHandler]:
    def register(fn: StreamHandler) -> StreamHandler:
        _STREAMS[request] = fn
        return fn

    return register


def new_run_id() -> str:
    """Time-ordered and unique: milliseconds since the epoch, then 40 random bits."""
    return f"run_{int(time.time() * 1000):011x}{secrets.token_hex(5)}"


class Engine(service.ServiceMethods):
    """The engine. Use as an async context manager; every service method is a coroutine."""

    def __init__(
        self,
        storage_: storage.Storage,
        *,
        registry: Registry,
        settings: Settings | None = None,
        clock: Clock | None = None,
        thread_pool: Executor | None = None,
        process_runner: ProcessRunner | None = None,
        instrument: Instrument = NO_INSTRUMENT,
    ) -> None:
        self.storage = storage_
        self.registry = registry
        self.settings = settings or Settings()
        self.clock: Clock = clock or SystemClock()
        self.instrument = instrument
        self._finish_waiters: dict[str, list[asyncio.Future[storage.RunRecord | None]]] = {}
        self._accepting = False
        self._fatal: asyncio.Future[BaseException] | None = None
        self.lease: LeaseKeeper | None = None  # this daemon's registration, set by compose
        self.cluster: ClusterLoop | None = None  # many daemons on the database (SPEC §13)
        self._moved: dict[str, float] = {}  # run → updated_at when the owner's poll resumed it
        self.holds = Holds()
        self.admission = Admission(
            storage_=storage_,
            clock=self.clock,
            registry=registry,
            start=self._start_run,
            cancel=self._cancel_started,
            is_started=self._is_started,
            timer_stored=self._timer_stored,
            on_finished=self._ended_unstarted,
            holds=self.holds,
        )
        self.supervisor = Supervisor(
            storage_=storage_,
            registry=registry,
            clock=self.clock,
            settings=self.settings,
            rate_limiter=StoredRateLimiter(storage_, self.clock),
            thread_pool=thread_pool,
            process_runner=process_runner,
            timer_stored=self._timer_stored,
            on_finished=self._on_finished,
            flow=self.admission,
            holds=self.holds,
            on_held_back=self.admission.hold,
            on_cancel_child=self._cancel_child,
            instrument=instrument,
        )
        self.triggers = triggers.Triggers(registry)
        self.new_runs = NewRuns(self.clock, self.settings.max_payload_bytes)
        self.scheduling = Schedules(
            storage_=storage_,
            clock=self.clock,
            registry=registry,
            admission=self.admission,
            cancel=self._cancel_for_schedule,
            timer_stored=self._timer_stored,
            max_payload_bytes=self.settings.max_payload_bytes,
        )
        self.ops = RunOperations(
            storage_=storage_,
            clock=self.clock,
            registry=registry,
            settings=self.settings,
            supervisor=self.supervisor,
            admission=self.admission,
            wait_for=self._wait_for,
        )
        self.edits = JournalEdits(
            storage_=storage_,
            clock=self.clock,
            registry=registry,
            supervisor=self.supervisor,
            admission=self.admission,
            run_op=self.new_runs.op,
            accept=self.new_runs.accepted_input,
            plan=self.new_runs.plan,
            new_run_id=new_run_id,
            started=self._offer_new,
        )
        self.intake = EventIntake(
            storage_, clock=self.clock, registry=registry, index=self.triggers,
            new_runs=self.new_runs, supervisor=self.supervisor, admission=self.admission,
            ops=self.ops, timer_stored=self._timer_stored,
            reached=lambda point: self.instrument.reached(point),
        )
        self.retention = Retention(storage_, self.clock, self.settings.retention)
        self.timers = Timers(
            storage_, self.clock, self.supervisor.deliver, self._on_fatal, instrument,
            on_run_timer=self._run_timer, on_schedule_timer=self.scheduling.on_timer,
            lag=self.supervisor.tallies.timer_lag,
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Recover every run that was moving, fire overdue timers, arm the timer task."""
        self._fatal = asyncio.get_running_loop().create_future()
        self.storage.failed.add_done_callback(self._on_storage_failed)
        await self.scheduling.reconcile()
        if self.lease is not None and self.storage.capabilities().many_daemons:
            self.cluster = ClusterLoop(
                self.storage, self.lease.daemon_id,
                self.settings.cluster_poll or min(1.0, self.lease.lease / 3),
                claim_limit=self.settings.max_active_runs, take_over=self._take_over,
                move=self._move_owned, timer_due=self._timer_stored, held=self.holds.runs,
                drives=self.supervisor.drives,
                on_states=self._heard_states, on_missed=self._missed,
                pump=self.admission.pump_shared, on_chunks=self._heard_chunks,
            )
            self.supervisor.owner = self.lease.daemon_id
            # Every status change committed here is announced to the other daemons.
            self.supervisor.changes.observers.append(self.cluster.state_changed)
            # And every stream chunk another daemon follows, so its followers re-read it.
            self.supervisor.streams.observers.append(self.cluster.chunk_written)
            self.admission.share(self.lease.daemon_id)
            self.admission.disown = self.supervisor.disown
        recovered = await self._recover()
        await self.scheduling.after_recovery()
        fired = await self.timers.fire_due()  # schedules missed while down fire here, collapsed
        self.timers.start()
        self.retention.start()
        if self.cluster is not None:
            self.cluster.start()
        self.instrument.reached("timers.armed")
        self._accepting = True
        resumed = await versions.resume_arrived_versions(self.storage, self.registry, self.ops)
        log.info("orchestrator.started", recovered=recovered, timers_fired=fired,
                 versions_arrived=resumed)

    def _timer_stored(self, due_at: float) -> None:
        self.timers.notify(due_at)

    def _start_run(self, run: storage.RunRecord) -> None:
        """Admission let ``run`` start: give it an actor (or a place in the actor queue)."""
        if run.admitted_at is not None and self.cluster is not None:
            self.supervisor.owns(run.run_id)  # the admission claimed it for this daemon
        self.supervisor.deliver(run.run_id, known=run, resuming=run.recoveries > 0)

    def _cancel_started(self, run_id: str, cancel: Cancel) -> None:
        self.ops.cancel_soon(run_id, cancel)

    def _cancel_child(self, child: storage.RunRecord, cancel: Cancel) -> None:
        self.ops.cancel_child(child, cancel)

    def _is_started(self, run_id: str) -> bool:
        return self.supervisor.knows(run_id)

    def _run_timer(self, timer: storage.TimerRecord) -> None:
        if timer.kind is storage.TimerKind.BATCH and isinstance(timer.payload, list):
            workflow_id, key = timer.payload
            self.admission.spawn(self.intake.flush_batch(workflow_id, key, timed_out=True))
            return
        if timer.run_id is None:
            return
        if timer.kind is storage.TimerKind.START:
            self.admission.on_start_timer(timer.run_id)
        else:
            self.admission.on_expire_timer(timer.run_id)

    async def _cancel_for_schedule(
        self, run: storage.RunRecord, reason: str, code: str
    ) -> None:
        """``cancel_other``: cancel a schedule's earlier run with error ``code``."""
        await self._cancel_run(run.run_id, reason, True, run, code=code)

    def _ended_unstarted(self, run: storage.RunRecord) -> None:
        """A run that never started ended (expired, cancelled while queued, replaced)."""
        self.supervisor.publish_state(run.run_id, str(run.status), run.workflow_id)
        if self.supervisor.tracing is not None:  # its one span says why it never ran
            self.supervisor.tracing.run_ended(run.run_id)
        self._on_finished(run)
        if run.parent_run_id is not None and run.parent_wp_id is not None:
            self.ops.spawn(self._resume_parent(run), f"resume:{run.parent_run_id}")

    async def _resume_parent(self, child: storage.RunRecord) -> None:
        """A child that never started ended, resolving its parent's wait: wake the parent."""
        assert child.parent_run_id is not None and child.parent_wp_id is not None
        wp = await self.storage.get_waitpoint(child.parent_run_id, child.parent_wp_id)
        if wp is not None and not wp.is_waiting and (wp.meta or {}).get(
            "child_run_id"
        ) == child.run_id:
            self.supervisor.deliver(child.parent_run_id, Resolve(bridge.resolution(wp)))

    async def _recover(self) -> int:
        """Restart every run that was moving when the daemon stopped. Paused runs stay as
        they are (a running one is held again before its next step); a cancel that was
        acknowledged is carried out."""
        runs = await self.storage.non_terminal_runs()
        self.holds.workflows.update(await self.storage.paused_workflows())
        await self.admission.rebuild(runs)
        if self.cluster is not None:
            # Only the runs this daemon claims are its to recover: the others are driven by
            # live daemons (or claimed by whoever gets them first).
            runs = await self.cluster.claim()
        return await self._take_over(runs)

    async def _take_over(self, runs: list[storage.RunRecord]) -> int:
        """Restart or resume ``runs``, which this daemon now drives (at start, or adopted from
        a dead daemon): in flight → restarted (recovery counted), waiting with a resolution →
        resumed, cancel requested → carried out, paused → held."""
        now = self.clock.now()
        limit = self.settings.max_recoveries
        for run in runs:
            if self.cluster is not None:
                self.supervisor.owns(run.run_id)
            if run.paused or run.status is storage.RunStatus.PAUSED:
                self.holds.pause(run.run_id)
            else:
                # Storage says: not paused. A hold kept from a pause made here while another
                # daemon drove the run, and lifted there since, would block it for ever.
                self.holds.resume(run.run_id)
        ops: list[storage.WriteOp[Any]] = []
        to_start: list[tuple[storage.RunRecord, bool]] = []  # (run, already started)
        cancels: list[storage.RunRecord] = []
        ended: list[storage.RunRecord] = []
        held: list[storage.RunRecord] = []
        for run in runs:
            if run.cancel_requested is not None:
                cancels.append(run)
                continue
            if run.status is storage.RunStatus.PAUSED:
                continue  # resolutions that came are recorded: the resume acts on them
            if run.paused and run.status is storage.RunStatus.RUNNING:
                # Paused while a step was in flight, then stopped: held where it stopped. The
                # step runs again after the resume (at-least-once), as after any crash.
                ops.append(storage.UpdateRun(run.run_id, at=now,
                                             status=storage.RunStatus.PAUSED))
                held.append(run)
                continue
            if self.holds.blocks_start(run) is not None:
                self.admission.hold(run)  # pending, and paused: it does not start
                continue
            # A run still "pending" may have started and crashed before its first commit (its
            # "running" rides on that commit), so it counts recoveries like a running one.
            # A delayed run whose start time has passed may have lost its timer to a crash
            # after the timer fired: start it too (a second delivery is harmless).
            restartable = run.status is storage.RunStatus.RUNNING or (
                run.status is storage.RunStatus.PENDING
                and (run.scheduled_at is None or run.scheduled_at <= now)
            )
            if restartable and self.admission.waits_for_slot(run):
                # Queued on a full concurrency group: it never started, so it costs no
                # recovery; admission starts it when a slot frees.
                to_start.append((run, False))
                continue
            if restartable:
                if run.recoveries >= limit:
                    error = {
                        "code": "RECOVERY_LIMIT",
                        "message": f"run was recovered {run.recoveries} times without "
                        f"progress (daemon.max_recoveries={limit})",
                    }
                    ops.append(storage.UpdateRun(run.run_id, at=now,
                                                 status=storage.RunStatus.FAILED,
                                                 error=error, finished_at=now))
                    log.error("run.failed", run_id=run.run_id, workflow_id=run.workflow_id,
                              error_code="RECOVERY_LIMIT")
                    ended.append(run)
                    continue
                ops.append(storage.UpdateRun(run.run_id, at=now, recoveries=run.recoveries + 1))
                to_start.append((run, run.status is storage.RunStatus.RUNNING))
            elif run.status is storage.RunStatus.WAITING and run.needs_resume:
                to_start.append((run, True))
        if ops:
            await self.storage.commit(ops)
        for run in ended:
            self.holds.forget(run.run_id)
            self.supervisor.publish_state(run.run_id, "failed", run.workflow_id)
        for run in held:
            self.supervisor.publish_state(run.run_id, "paused", run.workflow_id)
        for run in cancels:
            await self.ops.honour_cancel(run)
        for run, started in to_start:
            if started or run.status is not storage.RunStatus.PENDING:
                self.supervisor.deliver(run.run_id, resuming=True, priority=run.priority)
            else:
                # Not started as far as storage knows: admission decides again (its slots).
                await self.admission.offer(run)
            self.instrument.reached("recovery.scan")
        self.admission.pump()  # a limit raised by the deploy starts queued runs at once
        await self.intake.flush_full_batches()
        return len(to_start) + len(cancels)

    async def _move_owned(self, run_id: str, run: storage.RunRecord | None) -> None:
        """A run of ours that another daemon resolved, cancelled, paused or resumed, or one
        held here whose pause is gone from storage (the cluster's move pass): act on it here
        as if it had happened here."""
        if self.holds.is_changing(run_id):
            return  # a pause or resume of ours is being committed: storage lags memory
        if run is None or run.is_terminal:
            self.holds.forget(run_id)  # it ended (or was pruned) elsewhere: nothing to hold
            return
        if run.cancel_requested is not None:
            if run_id not in self.ops.cancels_delivered:
                # Once: the cancel reaches its actor (started for it if the run is parked,
                # warm or cold), which carries it out to the end.
                await self.ops.honour_cancel(run)
        elif run.paused or run.status is storage.RunStatus.PAUSED:
            self.ops.paused_elsewhere(run)
        elif self.holds.is_paused(run_id):
            self.ops.resumed_elsewhere(run)
        elif (run.status is storage.RunStatus.WAITING and run.needs_resume
              # Once per change of the run: a resolution its body no longer awaits leaves
              # the flag set (it is cleared when the run next commits "running").
              and self._moved.get(run_id) != run.updated_at
              and self.supervisor.resume_from_journal(run_id)):
            self._moved[run_id] = run.updated_at

    def _heard_states(self, changes: Sequence[storage.StatusChange]) -> None:
        """Status changes other daemons committed: to this daemon's watchers and feed."""
        for change in changes:
            self.supervisor.relay_state(change.run_id, change.status, change.workflow_id)
            if change.status in _ENDED and not self.supervisor.knows(change.run_id):
                # Ended where it was driven: drop what this daemon kept of it (a pause or a
                # cancel made through here).
                self.holds.forget(change.run_id)
                self.ops.cancels_delivered.discard(change.run_id)

    def _heard_chunks(self, written: Sequence[storage.StreamNotice]) -> None:
        """Streams another daemon wrote chunks of: their followers here re-read them."""
        for w in written:
            self.supervisor.streams.written_elsewhere(w.run_id, w.stream_id)

    def _missed(self) -> None:
        """The LISTEN connection came back: what the others announced meanwhile is gone."""
        self.supervisor.changes.missed()
        self.supervisor.streams.missed()

    async def close(self) -> None:
        """Stop the timers and the actors (in-flight steps get ``shutdown_grace``)."""
        self._accepting = False
        if self.cluster is not None:
            await self.cluster.close()
        await self.retention.close()
        await self.timers.stop()
        await self.scheduling.close()
        await self.ops.close()
        await self.admission.close()
        await self.supervisor.shutdown(self.settings.shutdown_grace)
        for waiters in self._finish_waiters.values():
            for fut in waiters:
                fut.cancel()

    @property
    def fatal(self) -> asyncio.Future[BaseException]:
        """Resolves with the error when the engine must stop (an I/O error on commit)."""
        assert self._fatal is not None, "the engine was not started"
        return self._fatal

    def _on_storage_failed(self, fut: asyncio.Future[BaseException]) -> None:
        if not fut.cancelled():
            self._on_fatal(fut.result())

    def fail(self, exc: BaseException) -> None:
        """Stop the engine for ``exc`` (fail-stop: the daemon exits writing nothing more)."""
        self._on_fatal(exc)

    def _on_fatal(self, exc: BaseException) -> None:
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_result(exc)

    def _on_finished(self, run: storage.RunRecord) -> None:
        self.holds.forget(run.run_id)
        self._moved.pop(run.run_id, None)
        self.ops.cancels_delivered.discard(run.run_id)
        self.admission.ended(run)
        for fut in self._finish_waiters.pop(run.run_id, ()):
            if not fut.done():
                fut.set_result(run)

    # ------------------------------------------------------------------ the service

    async def call(self, request: service.Request[R]) -> R:
        """Serve a request built in process: validated as one from the wire would be."""
        return await self.dispatch(protocol.normalize(request))

    async def dispatch(self, request: service.Request[R]) -> R:
        """Serve a request already validated (by ``protocol.parse_params``)."""
        handler = _HANDLERS.get(type(request))
        if handler is None:
            raise errors.MethodNotFound(request.method)
        try:
            result: R = await handler(self, request)
        except storage.StorageError as exc:
            errors.raise_from_storage(exc)
        return result

    async def open_stream(self, request: service.StreamRequest) -> AsyncIterator[JSONDict]:
        normal = protocol.normalize(request)
        with errors.from_storage():
            async for event in _STREAMS[type(normal)](self, normal):
                yield event

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise errors.ShuttingDown()

    async def _run_or_404(self, run_id: str) -> storage.RunRecord:
        run = await self.storage.get_run(run_id)
        if run is None:
            raise errors.NotFound("run", run_id)
        return run

    # ------------------------------------------------------------------ runs

    @handles(service.Submit)
    async def _submit(self, r: service.Submit) -> JSONDict:
        self._check_accepting()
        definition = self.registry.get(r.workflow_id)
        if definition is None:
            raise errors.NotFound("workflow", r.workflow_id)
        if r.version is not None:
            definition = self.registry.get_version(r.workflow_id, r.version)
            if definition is None:
                raise errors.InvalidParams(
                    "version", "one of " + ", ".join(self.registry.versions(r.workflow_id)),
                    repr(r.version))
        run_input = self.new_runs.accepted_input(definition, r.input)
        plan = self.new_runs.plan(definition, run_input)
        if plan.debounce is None or r.run_id is not None or r.idempotency_key is not None:
            return await self._create(r, definition, run_input, plan)
        if self.admission.daemon_id is not None:
            return await self._debounce_shared(r, definition, run_input, plan)
        async with self.admission.debounce_guard(r.workflow_id, plan.debounce):
            target = self.admission.debounce_target(r.workflow_id, plan.debounce)
            if target is not None:
                moved = await self.admission.collapse(target, definition, run_input)
                if moved is not None:
                    log.info("run.debounced", run_id=moved.run_id, workflow_id=r.workflow_id)
                    return {**views.run(moved), "debounced": True}
            return await self._create(r, definition, run_input, plan)

    async def _create(
        self, r: service.Submit, definition: WorkflowDefinition, run_input: Any, plan: Plan
    ) -> JSONDict:
        op = self._submit_op(r, definition, run_input, plan)
        created = await self.storage.create_run(op)
        if not created.created:
            return views.run(created.run)
        return await self._submitted(r, created.run, plan)

    def _submit_op(self, r: service.Submit, definition: WorkflowDefinition, run_input: Any,
                   plan: Plan) -> storage.CreateRun:
        return self.new_runs.op(
            definition, run_input, plan, run_id=r.run_id or new_run_id(), triggered_by="api",
            tags=tuple(r.tags), priority=r.priority, delay=_seconds(r.delay) or 0.0,
            ttl=_seconds(r.ttl), idempotency_key=r.idempotency_key,
            traceparent=_traceparent(r.traceparent),
        )

    async def _debounce_shared(
        self, r: service.Submit, definition: WorkflowDefinition, run_input: Any, plan: Plan
    ) -> JSONDict:
        """Many daemons: collapse into the key's pending run, or create it, in one transaction
        serialised on (workflow, key) in the database, whichever daemon got the submission."""
        spec = definition.debounce
        assert spec is not None and plan.debounce is not None
        done = await self.storage.execute(storage.DebounceSubmit(
            self._submit_op(r, definition, run_input, plan), plan.debounce,
            spec.period_seconds, spec.max_wait_seconds, spec.mode == "trailing"))
        if done.created:
            return await self._submitted(r, done.run, plan)
        moved = done.run
        if moved.scheduled_at is not None:
            self.timers.notify(moved.scheduled_at)
        log.info("run.debounced", run_id=moved.run_id, workflow_id=r.workflow_id)
        return {**views.run(moved), "debounced": True}

    async def _submitted(self, r: service.Submit, run: storage.RunRecord, plan: Plan
                         ) -> JSONDict:
        """A submitted run was just created: announce it, then admission or its timer."""
        log.info("run.submitted", run_id=run.run_id, workflow_id=r.workflow_id,
                 delay=_seconds(r.delay))
        self.supervisor.publish_state(run.run_id, "pending", run.workflow_id)
        if plan.debounce is not None:
            self.admission.debounced(run, plan.debounce)
        if run.expires_at is not None:
            self.timers.notify(run.expires_at)
        if run.scheduled_at is None:
            run = await self.admission.offer(run)
        else:
            self.timers.notify(run.scheduled_at)
        out = views.run(run)
        if plan.debounce is not None:
            out["debounced"] = False
        return out

    @handles(service.Get)
    async def _get(self, r: service.Get) -> JSONDict:
        try:
            journal = await self.storage.load_journal(r.run_id)
        except storage.NotFound as exc:
            raise errors.NotFound("run", r.run_id) from exc
        out = views.run_detail(journal)
        run = journal.run
        if run.status is storage.RunStatus.PENDING and not self.supervisor.knows(run.run_id):
            out["pending"] = await self.admission.why_pending(run)
        if run.attempt > 1 or run.started_at is not None:
            archives = await self.storage.run_archives(r.run_id)
            if archives:
                out["previous_attempts"] = views.archives(archives)
        return out

    @handles(service.List)
    async def _list(self, r: service.List) -> JSONDict:
        if r.search is not None and len(r.search) < storage.SEARCH_MIN_CHARS:
            # The trigram index cannot answer shorter text; a scan would not stay fast at 1M runs.
            raise errors.InvalidParams(
                "search", f"at least {storage.SEARCH_MIN_CHARS} characters", repr(r.search)
            )
        runs = await self.storage.list_runs(
            status=storage.RunStatus(r.status) if r.status else None,
            workflow_id=r.workflow_id,
            tag=r.tag,
            since=_seconds(r.since),
            until=_seconds(r.until),
            search=r.search,
            limit=r.limit,
        )
        return {"runs": views.runs(runs)}

    @handles(service.Prune)
    async def _prune(self, r: service.Prune) -> JSONDict:
        now = self.clock.now()
        policy = self.settings.retention
        if r.older_than is not None:
            statuses = (
                (storage.RunStatus(r.status),) if r.status
                else tuple(s for group in STATUS_GROUPS.values() for s in group)
            )
            targets = [(statuses, float(r.older_than))]
        else:
            targets = [
                (tuple(s for s in statuses if r.status in (None, s.value)), age)
                for statuses, age in policy.runs()
            ]
        targets = [(statuses, age) for statuses, age in targets if statuses]
        runs = events = 0
        for statuses, age in targets:
            if r.dry_run:
                runs += await self.storage.count_prunable(statuses, now - age, r.workflow_id)
            else:
                runs += await self.retention.prune_runs(statuses, now - age, r.workflow_id)
        # Events belong to no workflow: pruned only by a policy run over everything.
        if r.older_than is None and r.status is None and r.workflow_id is None \
                and policy.events is not None and not r.dry_run:
            events = await self.retention.prune_events(now - policy.events)
        if runs or events:
            await self.retention.vacuum(merges=MAX_INDEX_MERGES)
        return {"runs": runs, "events": events, "dry_run": r.dry_run}

    @handles(service.Wait)
    async def _wait(self, r: service.Wait) -> JSONDict:
        return views.run(await self._wait_for(r.run_id, _seconds(r.timeout)))

    async def _wait_for(self, run_id: str, timeout: float | None) -> storage.RunRecord:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[storage.RunRecord | None] = loop.create_future()
        self._finish_waiters.setdefault(run_id, []).append(fut)
        # In a cluster another daemon may drive the run: its end comes as an announcement
        # (listened to before the first read, so one between the two is not missed).
        states = self.supervisor.listen_state(run_id) if self.cluster is not None else None
        try:
            # A run the supervisor holds live is not over and will announce its end: no read
            # (10k clients waiting at once would otherwise queue 10k reads).
            if self.supervisor.is_live(run_id) or not (
                run := await self._run_or_404(run_id)
            ).is_terminal:
                if states is not None:
                    return await self._until_ended(run_id, fut, states, timeout)
                # The timeout completes ``fut`` with None: one timer handle, not wait_for's
                # waiter, callbacks and shield (~25 µs less per wait with 10k waiting).
                handle = None if timeout is None else loop.call_later(timeout, _time_up, fut)
                try:
                    ended = await fut
                finally:
                    if handle is not None:
                        handle.cancel()
                # The final record comes with the notification: no second read.
                run = ended if ended is not None else await self._run_or_404(run_id)
            return run
        finally:
            if states is not None:
                self.supervisor.unlisten_state(run_id, states)
            waiters = self._finish_waiters.get(run_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._finish_waiters[run_id]

    async def _until_ended(
        self,
        run_id: str,
        fut: asyncio.Future[storage.RunRecord | None],
        states: asyncio.Queue[str],
        timeout: float | None,
    ) -> storage.RunRecord:
        """``wait`` in a cluster: the run as it ended here (``fut``), or as read after a status
        change (announced by the daemon driving it), re-read at least every poll interval in
        case an announcement was lost; as it stands when ``timeout`` runs out."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = self._poll_interval() if deadline is None else min(
                self._poll_interval(), deadline - loop.time())
            if remaining <= 0:
                return await self._run_or_404(run_id)
            heard = asyncio.ensure_future(states.get())
            try:
                await asyncio.wait((fut, heard), timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                heard.cancel()
            if fut.done() and (ended := fut.result()) is not None:
                return ended
            announced = (heard.done() and not heard.cancelled()) or not states.empty()
            while not states.empty():
                states.get_nowait()
            # A run driven here announces its end through ``fut``: no read for it (many
            # waiters would otherwise cost a read each per interval). A change announced by
            # another daemon is always read: it may have ended the run (a cancel sent here of
            # a run that never started, or of one that daemon drives).
            if not announced and self.supervisor.drives(run_id):
                continue
            run = await self._run_or_404(run_id)
            if run.is_terminal:
                return run

    def _poll_interval(self) -> float:
        """How often a reader re-reads a run another daemon may drive (the cluster's poll)."""
        return self.cluster.interval if self.cluster is not None else 1.0

    # Run operations (cancel, pause, resume, retry, bulk): orchestrator.engine.operations.

    @handles(service.Cancel)
    async def _cancel(self, r: service.Cancel) -> JSONDict:
        self._check_accepting()
        return await self.ops.cancel(r)

    async def _cancel_run(
        self, run_id: str, reason: str | None, compensate: bool,
        run: storage.RunRecord | None = None, *, code: str = "CANCELLED",
    ) -> bool:
        """Cancel a run that has not ended: one that never started ends at once (it never
        runs); a started one is cancelled by its actor. False if it had already ended."""
        run = run or await self.storage.get_run(run_id)
        if run is None or run.is_terminal:
            return False
        await self.ops.cancel_run(run, reason, compensate, code)  # durable: stored first
        return True

    @handles(service.Pause)
    async def _pause(self, r: service.Pause) -> JSONDict:
        self._check_accepting()
        return await self.ops.pause(r)

    @handles(service.Resume)
    async def _resume(self, r: service.Resume) -> JSONDict:
        self._check_accepting()
        return await self.ops.resume(r)

    @handles(service.Retry)
    async def _retry(self, r: service.Retry) -> JSONDict:
        self._check_accepting()
        return await self.ops.retry(r)

    @handles(service.Bulk)
    async def _bulk(self, r: service.Bulk) -> JSONDict:
        if not r.dry_run:
            self._check_accepting()
        return await self.ops.bulk(r)

    @handles(service.Reschedule)
    async def _reschedule(self, r: service.Reschedule) -> JSONDict:
        self._check_accepting()
        run = await self._run_or_404(r.run_id)
        if run.status is not storage.RunStatus.PENDING:
            raise errors.RunNotActive(r.run_id, str(run.status), "reschedule")
        if r.delay is not None and r.at is not None:
            raise errors.InvalidParams("at", "either delay or at, not both", "both")
        now = self.clock.now()
        at = now + float(r.delay) if r.delay is not None else (
            float(r.at) if r.at is not None else None
        )
        return views.run(await self._move_pending(run, at))

    async def _move_pending(self, run: storage.RunRecord, at: float | None) -> storage.RunRecord:
        try:
            return await self.admission.reschedule(run, at)
        except storage.InvalidOperation as exc:
            raise errors.RunNotActive(run.run_id, "running", "reschedule") from exc

    @handles(service.Replay)
    async def _replay(self, r: service.Replay) -> JSONDict:
        run = await self._run_or_404(r.run_id)
        definition = self.registry.get(run.workflow_id)
        if definition is None:
            raise errors.NotFound("workflow", run.workflow_id)
        record = await self.storage.load_journal(r.run_id)
        return await replay.check(definition, record)

    @handles(service.Export)
    async def _export(self, r: service.Export) -> JSONDict:
        if not r.run_ids:
            raise errors.InvalidParams("run_ids", "at least one run id", "an empty list")
        return await export.export(self.storage, r.run_ids, self.clock.now())

    @handles(service.Fork)
    async def _fork(self, r: service.Fork) -> JSONDict:
        self._check_accepting()
        return await self.edits.fork(r)

    @handles(service.Amend)
    async def _amend(self, r: service.Amend) -> JSONDict:
        self._check_accepting()
        self.new_runs.check_size("output", r.output)
        return await self.edits.amend(r)

    async def _offer_new(self, run: storage.RunRecord) -> None:
        """A run created outside ``submit`` (a fork) goes the way a submitted one does."""
        self.supervisor.publish_state(run.run_id, "pending", run.workflow_id)
        if run.expires_at is not None:
            self.timers.notify(run.expires_at)
        if run.scheduled_at is None:
            await self.admission.offer(run)
        else:
            self.timers.notify(run.scheduled_at)

    # ------------------------------------------------------------------ resolutions

    @handles(service.SendEvent)
    async def _send_event(self, r: service.SendEvent) -> JSONDict:
        if r.dry_run:
            return await self.intake.dry_run(r)
        self._check_accepting()
        return await self.intake.send(r)

    @handles(service.Events)
    async def _events(self, r: service.Events) -> JSONDict:
        return await self.intake.recent(r)

    @handles(service.Signal)
    async def _signal(self, r: service.Signal) -> JSONDict:
        self._check_accepting()
        self.new_runs.check_size("payload", r.payload)
        run = await self._run_or_404(r.run_id)
        if run.is_terminal:
            raise errors.RunNotActive(r.run_id, str(run.status), "signal")
        sent = await self.storage.send_signal(
            storage.SendSignal(r.run_id, r.name, r.payload, self.clock.now())
        )
        if sent.waitpoint is not None:
            self.supervisor.deliver(r.run_id, Resolve(bridge.resolution(sent.waitpoint)))
        return {"delivered": sent.delivered}

    @handles(service.CompleteToken)
    async def _complete_token(self, r: service.CompleteToken) -> JSONDict:
        self._check_accepting()
        self.new_runs.check_size("payload", r.payload)
        try:
            wp = await self.storage.complete_token(
                storage.CompleteToken(r.token_id, r.payload, self.clock.now())
            )
        except storage.NotFound as exc:
            raise errors.NotFound("token", r.token_id) from exc
        self.supervisor.deliver(wp.run_id, Resolve(bridge.resolution(wp)))
        return {"run_id": wp.run_id}

    # ------------------------------------------------------------------ introspection

    @handles(service.Workflows)
    async def _workflows(self, r: service.Workflows) -> JSONDict:
        return {
            "workflows": [
                {"id": d.id, "version": d.version, "description": d.description,
                 "tags": list(d.tags), "timeout": d.timeout, "origin": d.origin}
                for d in sorted(self.registry, key=lambda d: d.id)
            ]
        }

    @handles(service.Daemons)
    async def _daemons(self, r: service.Daemons) -> JSONDict:
        me = self.lease.daemon_id if self.lease is not None else None
        return {"daemons": [views.daemon(d, this=d.daemon_id == me)
                            for d in await self.storage.list_daemons()]}

    @handles(service.Versions)
    async def _versions(self, r: service.Versions) -> JSONDict:
        return await versions.versions(self.storage, self.registry, r.workflow_id)

    @handles(service.Schedules)
    async def _schedules(self, r: service.Schedules) -> JSONDict:
        return await self.scheduling.list()

    @handles(service.ScheduleCreate)
    async def _schedule_create(self, r: service.ScheduleCreate) -> JSONDict:
        self._check_accepting()
        return await self.scheduling.create(r)

    @handles(service.ScheduleDelete)
    async def _schedule_delete(self, r: service.ScheduleDelete) -> JSONDict:
        self._check_accepting()
        return await self.scheduling.delete(r)

    @handles(service.SchedulePause)
    async def _schedule_pause(self, r: service.SchedulePause) -> JSONDict:
        self._check_accepting()
        return await self.scheduling.pause(r)

    @handles(service.ScheduleResume)
    async def _schedule_resume(self, r: service.ScheduleResume) -> JSONDict:
        self._check_accepting()
        return await self.scheduling.resume(r)

    @handles(service.ScheduleTrigger)
    async def _schedule_trigger(self, r: service.ScheduleTrigger) -> JSONDict:
        self._check_accepting()
        return await self.scheduling.trigger(r)

    @handles(service.ScheduleBackfill)
    async def _schedule_backfill(self, r: service.ScheduleBackfill) -> JSONDict:
        self._check_accepting()
        return await self.scheduling.backfill(r)

    @handles(service.Stats)
    async def _stats(self, r: service.Stats) -> JSONDict:
        counts = await self.storage.counts()
        return {
            "runs": dict(counts.runs_by_status),
            "waiting_waitpoints": counts.waiting_waitpoints,
            "timers": counts.timers,
            "events": counts.events,
            "inbox_signals": counts.inbox_signals,
            "actors": self.supervisor.stats().to_dict(),
            "scheduler": self.timers.stats().to_dict(),
            "flow": await self.admission.stats(),
            "operations": {
                "paused_runs": self.holds.paused_runs,
                "paused_workflows": sorted(self.holds.workflows),
                "change_followers": self.supervisor.changes.followers,
            },
        }

    # ------------------------------------------------------------------ feeds

    @streams(service.Tail)
    async def _tail(self, r: service.Tail) -> AsyncIterator[JSONDict]:
        floor = logs.LEVELS.get(r.level, 0) if r.level else 0
        with logs.subscribe(maxsize=1000) as sub:
            async for record in sub:
                if record.get("type") == "lagged":
                    yield record
                    continue
                if r.run_id is not None and record.get("run_id") != r.run_id:
                    continue
                if r.workflow_id is not None and record.get("workflow_id") != r.workflow_id:
                    continue
                if floor and logs.LEVELS.get(str(record.get("level", "info")), 20) < floor:
                    continue
                yield record

    @streams(service.Watch)
    async def _watch(self, r: service.Watch) -> AsyncIterator[JSONDict]:
        queue = self.supervisor.listen_state(r.run_id)
        try:
            run = await self._run_or_404(r.run_id)
            yield views.run(run)
            while not run.is_terminal:
                if self.cluster is None:
                    await queue.get()
                    heard = True
                else:
                    # Another daemon may drive it: its changes come as announcements, and a
                    # re-read every poll interval finds one that was lost.
                    try:
                        await asyncio.wait_for(queue.get(), self._poll_interval())
                        heard = True
                    except TimeoutError:
                        heard = False
                fresh = await self._run_or_404(r.run_id)
                if heard or fresh.status is not run.status:
                    yield views.run(fresh)
                run = fresh
        finally:
            self.supervisor.unlisten_state(r.run_id, queue)

    @streams(service.Changes)
    async def _changes(self, r: service.Changes) -> AsyncIterator[JSONDict]:
        async for change in self.supervisor.changes.follow(r.since):
            yield change

    @streams(service.Stream)
    async def _stream(self, r: service.Stream) -> AsyncIterator[JSONDict]:
        hub = self.supervisor.streams
        follower = hub.follow(r.run_id, r.stream_id) if r.follow else None
        try:
            run: storage.RunRecord | None = await self._run_or_404(r.run_id)
            next_seq = 0
            for chunk in await self.storage.stream_chunks(r.run_id, r.stream_id):
                yield views.chunk(chunk)
                next_seq = chunk.seq + 1
                if chunk.final:
                    return
            if follower is None or run is None or run.is_terminal:
                return  # ended without a final chunk (its source failed): nothing will come
            # Chunks come in memory from this daemon's actor. In a cluster another daemon may
            # drive the run: its chunks and its end are announced (a re-read), and a re-read
            # every poll interval covers an announcement lost.
            every = None if self.cluster is None else self._poll_interval()
            renewed = -math.inf
            while True:
                if self.cluster is not None and time.monotonic() - renewed >= self._poll_interval():
                    renewed = time.monotonic()
                    if not self.supervisor.knows(r.run_id):  # ask its writer to announce chunks
                        self.cluster.follow_elsewhere(r.run_id, r.stream_id)
                got = await follower.next(every)
                if isinstance(got, dict):
                    if got["seq"] < next_seq:
                        continue
                    if got["seq"] == next_seq:
                        next_seq += 1
                        yield got
                        if got["final"]:
                            return
                        continue
                    got = Reread.CHUNKS  # a gap (dropped while behind): storage has them
                if got is Reread.RUN:
                    run = await self.storage.get_run(r.run_id)  # before the chunks it ended after
                for chunk in await self.storage.stream_chunks(
                        r.run_id, r.stream_id, after_seq=next_seq - 1):
                    yield views.chunk(chunk)
                    next_seq = chunk.seq + 1
                    if chunk.final:
                        return
                if run is None or run.is_terminal:
                    return
        finally:
            if follower is not None:
                hub.unfollow(r.run_id, r.stream_id, follower)


def _traceparent(value: str | None) -> str | None:
    """A submitted W3C ``traceparent``, checked; a malformed one is refused, never dropped."""
    if value is None or value == "":
        return None
    if spans.parse_traceparent(value) is None:
        raise errors.InvalidParams(
            "traceparent", "a W3C traceparent '00-<32 hex>-<16 hex>-<2 hex>' with non-zero ids",
            repr(value[: spans.MAX_TRACEPARENT + 10]),
        )
    return value


def _seconds(value: float | str | None) -> float | None:
    """A normalized request's duration (already float seconds)."""
    return None if value is None else float(value)


def _time_up(fut: asyncio.Future[storage.RunRecord | None]) -> None:
    """A ``wait`` ran out of time: it answers the run as it stands (None: read it)."""
    if not fut.done():
        fut.set_result(None)
