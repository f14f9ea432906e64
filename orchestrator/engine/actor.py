"""The actor of one run: its single writer.

An actor owns one run while the run is active. It builds (or takes back warm) the run's
:class:`runtime.executor.Execution`, advances it, and commits every journal entry the body
produces through storage's group commit before the body continues. Deliveries (resolutions,
cancel) reach it through its mailbox. When the body parks, the actor commits ``waiting``, hands
the execution to the warm cache (or closes it) and ends; the next delivery starts a new actor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import structlog

import storage
from orchestrator.engine import bridge, spans, triggers
from orchestrator.engine.flow.plan import EMPTY, plan_for
from orchestrator.engine.messages import Cancel, Message, Resolve
from orchestrator.engine.ports import RunHost
from runtime import errors as rt_errors
from runtime import journal as rj
from runtime._signals import Suspended
from runtime.executor import Execution
from runtime.facts import Outcome
from runtime.flow import KeyResolutionError
from runtime.status import ResolutionSource, RunStatus, WaitpointKind
from storage.instruments import NO_INSTRUMENT, Instrument

R = TypeVar("R")

# One proxy for every actor: structlog caches the configured logger in it on first use, so
# binding a run's logger does not build a new logger (and look up its file) per run.
_RUN_LOG = structlog.get_logger("wf.run")


def _debug_enabled(log: Any) -> bool:
    """Whether ``log`` emits debug lines (structlog's filtering loggers say so; any other
    wrapper is asked to emit them and filters them itself)."""
    check = getattr(log, "is_enabled_for", None)
    return True if check is None else bool(check(logging.DEBUG))


class RunActor:
    """Drives one run until it parks or ends. Created and owned by the supervisor; knows it
    only as a :class:`~orchestrator.engine.ports.RunHost`."""

    def __init__(
        self,
        host: RunHost,
        run_id: str,
        known: storage.RunRecord | None = None,
        instrument: Instrument = NO_INSTRUMENT,
    ) -> None:
        self.host = host
        self.instrument = instrument
        self.run_id = run_id
        self._known = known  # the record as just committed by submit: saves a read
        self.mailbox: deque[Message] = deque()
        self.task: asyncio.Task[None] | None = None
        self.run: storage.RunRecord | None = None
        self.log: Any = _RUN_LOG.bind(run_id=run_id)
        # Per-step lines are at debug: when the level filters them out, the step path skips
        # them entirely (a filtered call still builds its keyword dict and makes a call).
        self._debug = _debug_enabled(self.log)
        # Ops that ride along with the run's next commit, in the same transaction (see drive).
        self._prefix: list[storage.WriteOp[Any]] = []
        self._advancing: Execution | None = None  # set only while advance() runs
        self._execution: Execution | None = None  # the one this actor drives
        self.finishing = False  # set before the final commit (Supervisor.is_live)
        self._cancel: Cancel | None = None  # the cancel applied to the body, if any
        # A pause holds the body's branches at the step gate (see held): they wait on
        # _release; _holding says "paused" was committed for it and "running" is still due.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Future[None] | None = None
        self._holding = False
        self._status_lock = asyncio.Lock()

    def post(self, message: Message | None) -> None:
        if message is None:
            return
        if self._advancing is not None:
            # The body is running: hand it over now, so a cancel reaches the step in flight and
            # a resolution wakes a parallel branch without waiting for the others to park.
            self._apply(self._advancing, message)
        else:
            self.mailbox.append(message)

    # ------------------------------------------------------------------ the actor's life

    async def drive(self) -> None:
        self._loop = asyncio.get_running_loop()
        warm = self.host.take_warm(self.run_id)
        execution: Execution | None = None
        if warm is not None:
            execution, run = warm  # a warm run's record is kept with it: no read
        elif self._known is not None:
            run = self._known  # just committed by submit: no read
        else:
            found = await self.host.storage.get_run(self.run_id)
            if found is None:
                return
            run = found
        self._known = None
        if run.is_terminal:
            if execution is not None:
                await execution.close()
            return
        cancelling = any(isinstance(m, Cancel) for m in self.mailbox)
        if run.cancel_requested is not None and not cancelling:
            # Acknowledged before a crash (or before the run had an actor): carry it out now.
            self.mailbox.appendleft(Cancel.requested(run.cancel_requested))
            cancelling = True
        if not cancelling and self.host.holds_start(run):
            # Paused (the run, or its workflow) while it waited for this actor: not started.
            self.host.held_back(run)
            return
        self.log = self.log.bind(workflow_id=run.workflow_id)
        now = self.host.clock.now()
        fresh = run.status is storage.RunStatus.PENDING and run.started_at is None
        started = run.started_at if run.started_at is not None else now
        # "running", the start time, clearing the resume flag and (for a recovered run) the
        # recovery count ride along with the run's next commit instead of costing one of their
        # own. Until then storage still says "pending" or "waiting" with the flag set, which
        # recovery restarts, and a "running" run is always restarted: no resolution is stranded.
        self._prefix = [
            storage.UpdateRun(
                self.run_id,
                at=now,
                status=storage.RunStatus.RUNNING,
                started_at=started,
                recoveries=0 if run.recoveries else storage.UNSET,
            )
        ]
        run = dataclasses.replace(run, started_at=started)
        if execution is None:
            execution = await self._cold_execution(run, fresh)
            if execution is None:
                return
            self.log.info("run.started" if fresh else "run.resumed", replay=not fresh)
        else:
            self.log.info("run.resumed", replay=False)
        self.run = run
        self._execution = execution
        await self._advance_until_parked(execution)

    async def _cold_execution(self, run: storage.RunRecord, fresh: bool) -> Execution | None:
        definition = self.host.registry.get(run.workflow_id)
        if definition is not None and run.version_pinned:
            # Pinned (an explicit version=): only that version's code may drive it.
            definition = self.host.registry.get_version(run.workflow_id,
                                                        run.workflow_version or "")
            if definition is None:
                await self._hold_run(run, rt_errors.error_dict(
                    "VERSION_MISSING",
                    f"run {run.run_id} is pinned to version {run.workflow_version!r} of "
                    f"workflow {run.workflow_id!r}, which this daemon does not register "
                    f"(it has {', '.join(self.host.registry.versions(run.workflow_id))})",
                    data={"workflow_id": run.workflow_id, "version": run.workflow_version,
                          "registered": self.host.registry.versions(run.workflow_id)},
                ), diverged=False)
                return None
        if definition is None:
            error = rt_errors.error_dict(
                "WORKFLOW_NOT_FOUND",
                f"workflow {run.workflow_id!r} is not registered in this daemon",
                data={"workflow_id": run.workflow_id},
            )
            await self._finish(run, Outcome(status=RunStatus.FAILED, error=error), None)
            return None
        # A run that never started has recorded nothing: skip the journal reads.
        journal = rj.Journal() if fresh else bridge.runtime_journal(
            await self.host.storage.load_journal(self.run_id)
        )
        facts = bridge.run_facts(run, definition)
        host = self.host.services(run, self._record)
        return Execution(definition, run.input, facts, journal, host)

    async def _advance_until_parked(self, execution: Execution) -> None:
        run = self.run
        assert run is not None
        # A warm execution records through the actor that created it; point it at this one.
        execution.host.record = self._record
        compute_before = execution.compute_used
        while True:
            self._apply_mailbox(execution)
            self._advancing = execution
            try:
                outcome = await execution.advance()
            except asyncio.CancelledError:
                # Shutdown gave up on the run after its grace: stop its body and its step
                # here; nothing it does later may be recorded (recovery runs the step again).
                execution.host.record = _parked
                await execution.close()
                raise
            finally:
                self._advancing = None
            if outcome.divergence:
                self.log.warning("replay.divergence", detail=list(outcome.divergence),
                                 held=outcome.status is RunStatus.PAUSED)
            if outcome.status is RunStatus.PAUSED:
                await self._hold_diverged(outcome, execution, compute_before)
                return
            if outcome.status is not RunStatus.WAITING:
                await self._finish(run, outcome, execution)
                # The execution's host records through this actor (a bound method): let go of
                # it, so an ended run is freed by reference counting, not the cyclic collector.
                self._execution = None
                return
            if self.mailbox:
                continue
            if not self.host.accepting:
                # Stopped at a step boundary by shutdown: the run stays "running" in storage
                # and the next start recovers it. Nothing is lost: every entry is committed.
                return
            compute = execution.compute_used - compute_before
            compute_before = execution.compute_used
            if self._prefix:
                # Parking again before anything else was committed: keep "running" out of this
                # commit, as it would clear the resume flag, and a resolution committed while
                # we replayed may be in the mailbox still. A crash now must find it flagged.
                self._prefix = [_keep_resume_flag(op) for op in self._prefix]
            # A paused run parks "paused": it stays parked, and what resolves meanwhile is
            # kept for the resume (the supervisor holds the deliveries).
            paused = self.host.paused(self.run_id)
            parked = storage.RunStatus.PAUSED if paused else storage.RunStatus.WAITING
            await self._commit(
                storage.UpdateRun(
                    self.run_id,
                    at=self.host.clock.now(),
                    status=parked,
                    add_compute_seconds=compute,
                )
            )
            while paused != self.host.paused(self.run_id):
                # Paused or resumed while that was being committed: the last word is theirs.
                paused = not paused
                parked = storage.RunStatus.PAUSED if paused else storage.RunStatus.WAITING
                await self._commit(
                    storage.UpdateRun(self.run_id, at=self.host.clock.now(), status=parked)
                )
            self._holding = False  # whatever a hold committed, the parked status is the last
            if self.mailbox:  # a delivery arrived while "waiting" was being committed
                continue
            self.log.info(
                "run.paused" if paused else "run.waiting",
                waitpoints=[w.wp_id for w in outcome.waiting_on],
            )
            self.host.publish_state(self.run_id, str(parked), run.workflow_id)
            # Let go of this actor (its task, logger, mailbox): the next actor to resume the
            # run points the execution at itself. A parked body records nothing.
            execution.host.record = _parked
            self.host.park(
                self.run_id,
                execution,
                dataclasses.replace(run, status=parked, recoveries=0),
            )
            return

    async def _hold_diverged(
        self, outcome: Outcome, execution: Execution, compute_before: float
    ) -> None:
        """The replay left the journal (SPEC §3): hold the run ``paused`` with its pause flag
        and code ``NONDETERMINISM``, never fail it. ``wf resume`` replays it again on whatever
        code is loaded then. The execution is closed: a warm body would skip that replay."""
        run = self.run
        assert run is not None
        execution.host.record = _parked
        await execution.close()
        self._execution = None
        await self._hold_run(run, outcome.error, diverged=True,
                         compute=execution.compute_used - compute_before)

    async def _hold_run(
        self, run: storage.RunRecord, error: dict[str, Any] | None, *, diverged: bool,
        compute: float = 0.0,
    ) -> None:
        """Commit the run ``paused`` with its pause flag and ``error`` (its code says why):
        held, never failed, until ``wf resume`` (or, for a missing version, a daemon that has
        it) moves it again."""
        now = self.host.clock.now()
        self.host.hold(self.run_id)  # first: what resolves from here is kept for the resume
        await self._commit_many([
            storage.UpdateRun(
                self.run_id, at=now, status=storage.RunStatus.PAUSED, error=error,
                diverged=diverged or storage.UNSET, add_compute_seconds=compute,
            ),
            storage.RequestPause(self.run_id, now),
        ])
        self.log.warning("run.held", code=(error or {}).get("code"))
        self.host.publish_state(self.run_id, "paused", run.workflow_id)

    async def fail_internal(self, cause: BaseException) -> None:
        """End the run ``failed`` with code ``INTERNAL`` after an engine error (SPEC §3: no
        engine error leaves a run running or waiting); its execution is closed."""
        execution, self._execution = self._execution, None
        if execution is not None:
            execution.host.record = _parked
            await execution.close()
        run = self.run or await self.host.storage.get_run(self.run_id)
        if run is None or run.is_terminal:
            return
        error = rt_errors.error_dict(
            "INTERNAL",
            f"the engine failed while driving this run: {cause!r}",
            name=type(cause).__name__,
        )
        await self._finish(run, Outcome(status=RunStatus.FAILED, error=error), None)

    def _apply_mailbox(self, execution: Execution) -> None:
        while self.mailbox:
            self._apply(execution, self.mailbox.popleft())

    def _apply(self, execution: Execution, message: Message) -> None:
        if isinstance(message, Resolve):
            execution.resolve(message.resolution)
        else:
            if self._cancel is None:
                self._cancel = message
            execution.cancel(message.reason, compensate=message.compensate, code=message.code)

    # ------------------------------------------------------------------ pause

    def held(self) -> Awaitable[None] | None:
        """The step gate of a paused run: an awaitable that holds the branch (None: go on).
        A cancelled run is never held: its compensations must run."""
        execution = self._execution
        if execution is None or execution.is_cancelled or self._loop is None:
            return None
        return self._hold()

    async def _hold(self) -> None:
        """A host job of the body, run before a new step while the run is paused: the first
        branch to get here commits ``paused`` (every step before it is recorded); all wait
        for the resume, and the first to go on commits ``running``."""
        assert self._loop is not None
        run = self.run
        workflow_id = run.workflow_id if run is not None else None
        async with self._status_lock:
            if not self.host.paused(self.run_id):
                return  # resumed before this branch got here
            if self._release is None or self._release.done():
                self._release = self._loop.create_future()
                self._release.add_done_callback(_retrieve)
            release = self._release
            if not self._holding:
                self._holding = True
                await asyncio.shield(self._commit(storage.UpdateRun(
                    self.run_id, at=self.host.clock.now(), status=storage.RunStatus.PAUSED)))
                self.log.info("run.paused", held_before="step")
                self.host.publish_state(self.run_id, "paused", workflow_id)
        await release
        async with self._status_lock:
            if self._holding:
                self._holding = False
                await asyncio.shield(self._commit(storage.UpdateRun(
                    self.run_id, at=self.host.clock.now(), status=storage.RunStatus.RUNNING)))
                self.log.info("run.resumed", replay=False)
                self.host.publish_state(self.run_id, "running", workflow_id)

    def release(self) -> None:
        """The pause was lifted: the held branches go on."""
        if self._release is not None and not self._release.done():
            self._release.set_result(None)

    def abandon_hold(self) -> None:
        """Shutdown: held branches stop where they are (the run stays ``paused``)."""
        if self._release is not None and not self._release.done():
            self._release.set_exception(Suspended())

    async def _finish(
        self, run: storage.RunRecord, outcome: Outcome, execution: Execution | None
    ) -> None:
        self.finishing = True
        now = self.host.clock.now()
        status = storage.RunStatus(str(outcome.status))
        ops: list[storage.WriteOp[Any]] = [
            storage.UpdateRun(
                self.run_id,
                at=now,
                status=status,
                output=outcome.output,
                error=outcome.error,
                finished_at=now,
                diverged=bool(outcome.divergence),
            )
        ]
        parent_resolution: rj.WaitpointResolved | None = None
        child_cancel: Cancel | None = None
        if outcome.status is RunStatus.CANCELLED:
            # Its non-detached children are cancelled too, durably: the requests commit with
            # this end, so a crash before they are carried out leaves them to recovery.
            compensate = self._cancel.compensate if self._cancel is not None else True
            child_cancel = Cancel(f"parent run {self.run_id} was cancelled", compensate)
            ops.append(storage.RequestChildCancels(
                self.run_id, now, child_cancel.reason, child_cancel.compensate))
        if run.parent_run_id is not None and run.parent_wp_id is not None:
            payload, error = _child_result(run, outcome)
            ops.append(
                storage.ResolveWaitpoint(
                    run.parent_run_id, run.parent_wp_id, now, storage.ResolutionSource.LIVE,
                    payload=payload, error=error, child_run_id=self.run_id,
                )
            )
            parent_resolution = rj.WaitpointResolved(
                run.parent_wp_id, WaitpointKind.RUN, now, ResolutionSource.LIVE, payload, error
            )
        results = await self._commit_many(ops)
        if parent_resolution is not None and run.parent_run_id is not None and results[-1]:
            self.host.deliver(run.parent_run_id, Resolve(parent_resolution))
        fields: dict[str, Any] = {"status": str(status)}
        if outcome.error:
            fields["error_code"] = outcome.error.get("code")
        event = {
            RunStatus.COMPLETED: "run.completed",
            RunStatus.CANCELLED: "run.cancelled",
        }.get(outcome.status, "run.failed")
        self.log.info(event, **fields)
        if child_cancel is not None:
            for child in results[1]:
                self.host.cancel_child(child, child_cancel)
        final = dataclasses.replace(
            run, status=status, output=outcome.output, error=outcome.error, finished_at=now,
            updated_at=now, diverged=bool(outcome.divergence),
        )
        self.host.run_finished(final)

    # ------------------------------------------------------------------ the host callback

    async def _commit_many(self, ops: list[storage.WriteOp[Any]]) -> list[Any]:
        """Commit ``ops`` in one transaction (group commit), after any pending prefix."""
        if not self._prefix:
            return await self.host.storage.commit(ops)
        prefix, self._prefix = self._prefix, []
        results = await self.host.storage.commit([*prefix, *ops])
        if any(isinstance(op, storage.UpdateRun) and op.status is storage.RunStatus.RUNNING
               for op in prefix):
            run = self.run or self._known
            self.host.publish_state(self.run_id, "running",
                                    run.workflow_id if run is not None else None)
        return results[len(prefix):]

    async def _commit(self, op: storage.WriteOp[R]) -> R:
        if not self._prefix:
            return await self.host.storage.execute(op)
        result: R = (await self._commit_many([op]))[0]
        return result

    async def _record(self, entry: rj.Entry) -> Sequence[rj.WaitpointResolved]:
        """Commit one journal entry (group commit); return resolutions it produced at once."""
        run_id = self.run_id
        if isinstance(entry, rj.StepAttempt):
            self.instrument.reached("step.returned")
            await self._commit(bridge.step_op(run_id, entry))
            if self.run is not None:
                self.host.tallies.steps.observe(
                    (self.run.workflow_id, "ok" if entry.status == "ok" else "error"),
                    entry.finished_at - entry.started_at)
            if entry.status == "ok":
                if self._debug:
                    self.log.debug(
                        "step.completed", step_id=entry.step_id, attempt=entry.attempt,
                        duration_ms=round((entry.finished_at - entry.started_at) * 1e3, 3))
            else:
                code = (entry.error or {}).get("code")
                self.log.info("step.failed", step_id=entry.step_id, attempt=entry.attempt,
                              error_code=code)
                if entry.retry_at is not None:
                    self.log.info("step.retry_scheduled", step_id=entry.step_id,
                                  attempt=entry.attempt + 1, retry_at=entry.retry_at)
            return ()
        if isinstance(entry, rj.WaitpointRegistered):
            return await self._register(entry)
        if isinstance(entry, rj.MetadataOp):
            target = self._metadata_target(entry.target)
            if target is not None:
                await self._commit(bridge.metadata_op(run_id, target, entry))
            return ()
        if isinstance(entry, rj.StreamChunk):
            await self._commit(bridge.chunk_op(run_id, entry))
            return ()
        if isinstance(entry, rj.CompensationRan):
            await self._commit(bridge.compensation_op(run_id, entry))
            self.log.info("compensation.ran", step_id=entry.step_id, status=entry.status)
            return ()
        raise TypeError(f"unexpected journal entry {entry!r}")

    def _metadata_target(self, target: str) -> str | None:
        run = self.run
        if target == "self" or run is None:
            return self.run_id
        if target == "parent":
            return run.parent_run_id
        return run.root_run_id or run.parent_run_id

    async def _register(self, entry: rj.WaitpointRegistered) -> Sequence[rj.WaitpointResolved]:
        if entry.kind is WaitpointKind.RUN:
            return await self._invoke(entry)
        result = await self._commit(bridge.register_op(self.run_id, entry))
        due = min((t for t in (entry.due_at, entry.timeout_at) if t is not None), default=None)
        if due is not None:
            self.host.timer_stored(due)
        if self._debug:
            self.log.debug("waitpoint.registered", waitpoint_id=entry.wp_id,
                           kind=str(entry.kind))
        self.instrument.reached("waitpoint.committed")
        wp = result.waitpoint
        if wp.is_waiting:
            return ()
        return (bridge.resolution(wp),)

    async def _invoke(self, entry: rj.WaitpointRegistered) -> Sequence[rj.WaitpointResolved]:
        meta = entry.meta
        run = self.run
        now = self.host.clock.now()
        register = bridge.register_op(self.run_id, entry)
        definition = self.host.registry.get(meta["workflow_id"])
        problem: dict[str, Any] | None = None
        child_input = meta["input"]
        if definition is None:
            problem = rt_errors.error_dict(
                "NOT_FOUND", f"workflow {meta['workflow_id']!r} is not registered",
                data={"workflow_id": meta["workflow_id"]},
            )
        elif definition.input_validator is not None:
            try:
                child_input = definition.input_validator(child_input)
            except Exception as exc:
                problem = rt_errors.error_dict("VALIDATION", f"child input rejected: {exc}")
        plan = EMPTY
        cancel_on: tuple[storage.CancelRule, ...] = ()
        if problem is None and definition is not None:
            try:
                plan = plan_for(definition, child_input)
                cancel_on = triggers.cancel_rules(definition, child_input)
            except KeyResolutionError as exc:
                problem = rt_errors.error_dict("VALIDATION", str(exc))
        if problem is None and plan.groups and run is not None:
            group = await self.host.concurrency_deadlock(run, plan)
            if group is not None:
                problem = rt_errors.error_dict(
                    "CONCURRENCY_DEADLOCK",
                    f"child {meta['workflow_id']!r} could never start: concurrency group "
                    f"{group} is held to its limit by this run or its ancestors",
                    name="FatalError", data={"group": group},
                )
        if problem is not None or definition is None:
            fail = storage.ResolveWaitpoint(
                self.run_id, entry.wp_id, now, storage.ResolutionSource.LIVE, error=problem
            )
            await self._commit_many([register, fail])
            return (rj.WaitpointResolved(entry.wp_id, entry.kind, now, ResolutionSource.LIVE,
                                         error=problem),)
        detach = bool(meta.get("detach"))
        child = storage.CreateRun(
            run_id=meta["child_run_id"],
            workflow_id=definition.id,
            created_at=now,
            input=child_input,
            workflow_version=definition.version,
            version_pinned=definition.pinned,
            tags=tuple(meta.get("tags") or ()),
            idempotency_key=meta.get("idempotency_key"),
            parent_run_id=self.run_id,
            root_run_id=(run.root_run_id if run and run.root_run_id else self.run_id),
            parent_wp_id=None if detach else entry.wp_id,
            triggered_by="invoke",
            flow=plan.to_json(),
            throttle_key=plan.throttle,
            expires_at=now + definition.start_timeout if definition.start_timeout else None,
            cancel_on=cancel_on,
            traceparent=spans.child_traceparent(run, entry.wp_id) if run is not None else None,
        )
        ops: list[storage.WriteOp[Any]] = [storage.CreateChildRun(child=child, invoke=register)]
        if detach:  # nothing will ever wait on it: resolve in the same transaction
            ops.append(storage.ResolveWaitpoint(
                self.run_id, entry.wp_id, now, storage.ResolutionSource.LIVE))
        results = await self._commit_many(ops)
        created: storage.ChildRunCreated = results[0]
        if created.created:
            self.log.info("run.submitted", child_run_id=child.run_id,
                          child_workflow_id=child.workflow_id)
            self.host.publish_state(child.run_id, "pending", child.workflow_id)
            self.host.admit(created.run)
        if detach:
            return (rj.WaitpointResolved(entry.wp_id, entry.kind, now, ResolutionSource.LIVE),)
        wp = created.waitpoint
        if wp is not None and not wp.is_waiting:  # the child had already ended (re-creation)
            return (bridge.resolution(wp),)
        return ()


def _child_result(run: storage.RunRecord, outcome: Outcome) -> tuple[Any, dict[str, Any] | None]:
    if outcome.status is RunStatus.COMPLETED:
        return outcome.output, None
    return None, bridge.child_error(run.run_id, str(outcome.status), outcome.error)


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # an abandoned hold nobody waits on any more: not worth a warning


def _keep_resume_flag(op: storage.WriteOp[Any]) -> storage.WriteOp[Any]:
    if isinstance(op, storage.UpdateRun) and op.status is storage.RunStatus.RUNNING:
        return dataclasses.replace(op, status=storage.UNSET)
    return op


async def _parked(entry: rj.Entry) -> Sequence[rj.WaitpointResolved]:
    raise RuntimeError(f"a parked execution recorded {type(entry).__name__} with no actor")
