"""Run operations (SPEC §6): cancel, pause and resume (a run or a workflow), retry, bulk.

Each operation commits what it decided before it acts on it and before it answers, so an
acknowledged operation survives a ``kill -9``: a cancel request (``cancel_requested``) that the
run's next actor, or recovery, carries out; a pause flag that recovery honours (a paused run is
not restarted; a running one is held again before its next step); a paused workflow; a retry.
Then the run is moved: a pending run that never started through admission, any other through
the supervisor (its actor, warm or replayed from its journal).

What a pause does depends on where the run is:

- pending: it is not started (admission keeps it, ``get`` says ``pending.paused``);
- parked (``waiting``, warm or cold): it becomes ``paused`` at once and stays parked;
- running: its actor holds each branch at the step gate (the in-flight step finishes and is
  recorded first), commits ``paused``, and keeps the body in memory until the resume.

While a run is paused, the resolutions that reach it (events, signals, timers, tokens, child
ends) are committed as always and kept for the resume (:class:`~orchestrator.engine.holds.Holds`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

import storage
from orchestrator.api import errors, protocol, service, views
from orchestrator.api.service import JSONDict
from orchestrator.engine.flow.admission import Admission
from orchestrator.engine.messages import Cancel
from orchestrator.engine.settings import Settings
from orchestrator.engine.supervisor import Supervisor
from runtime.clock import Clock
from runtime.workflow import Registry

log = structlog.get_logger("wf")

BULK_CHUNK = 256
"""Runs a bulk action moves at once: their commits share transactions (group commit)."""

RECHECK = 1.0
"""Seconds between re-reads of a run an operation waits on (the fallback for a status change
announced by another daemon and lost)."""

WaitFor = Callable[[str, float | None], Awaitable[storage.RunRecord]]

_RUN_STATUS = storage.RunStatus


class RunOperations:
    """The engine's run operations; the engine's handlers delegate here."""

    def __init__(
        self,
        *,
        storage_: storage.Storage,
        clock: Clock,
        registry: Registry,
        settings: Settings,
        supervisor: Supervisor,
        admission: Admission,
        wait_for: WaitFor,
    ) -> None:
        self._storage = storage_
        self._clock = clock
        self._registry = registry
        self._settings = settings
        self._supervisor = supervisor
        self._admission = admission
        self._wait_for = wait_for
        self.holds = supervisor.holds
        self._tasks: set[asyncio.Task[Any]] = set()
        # Runs whose cancel was handed to their actor here (until they end): the cluster's
        # move pass does not hand it over again.
        self.cancels_delivered: set[str] = set()

    async def _run_or_404(self, run_id: str) -> storage.RunRecord:
        run = await self._storage.get_run(run_id)
        if run is None:
            raise errors.NotFound("run", run_id)
        return run

    # ------------------------------------------------------------------ cancel

    async def cancel(self, r: service.Cancel) -> JSONDict:
        run = await self.cancel_run(await self._run_or_404(r.run_id), r.reason, r.compensate)
        if not run.is_terminal:
            # Give the run a moment to unwind (its compensations run); the cancel is durable.
            run = await self._wait_for(r.run_id, self._settings.shutdown_grace)
        return views.run(run)

    async def cancel_run(
        self,
        run: storage.RunRecord,
        reason: str | None,
        compensate: bool,
        code: str = "CANCELLED",
    ) -> storage.RunRecord:
        """Cancel ``run``: a pending run that never started ends at once; any other gets a
        durable cancel request, then its actor carries it out. Returns the run as stored."""
        if run.is_terminal:
            raise errors.RunNotActive(run.run_id, str(run.status), "cancel")
        if run.status is _RUN_STATUS.PENDING and run.started_at is None and (
            await self._admission.cancel_unstarted(run, reason, code=code)
        ):
            return await self._run_or_404(run.run_id)
        stored = await self._storage.execute(storage.RequestCancel(
            run.run_id, self._clock.now(), reason, compensate, code))
        if stored.is_terminal:
            return stored
        self._carry_out(stored, Cancel(reason, compensate, code))
        return stored

    def _carry_out(self, run: storage.RunRecord, cancel: Cancel) -> None:
        """Deliver a cancel already requested in storage."""
        self.cancels_delivered.add(run.run_id)
        if run.status is _RUN_STATUS.PENDING:
            self._admission.forget(run.run_id)  # its actor ends it, with its journal
        self._supervisor.deliver(run.run_id, cancel, resuming=True)

    async def honour_cancel(self, run: storage.RunRecord) -> None:
        """Carry out the cancel stored on ``run`` (recovery; a cancelled parent's children)."""
        cancel = Cancel.requested(run.cancel_requested)
        if (run.status is _RUN_STATUS.PENDING and run.started_at is None
                and not self._supervisor.knows(run.run_id)
                and await self._admission.cancel_unstarted(run, cancel.reason)):
            return
        self._carry_out(run, cancel)

    def cancel_child(self, child: storage.RunRecord, cancel: Cancel) -> None:
        """A cancelled run's child, its cancel request committed with the parent's end."""
        self._spawn(self.honour_cancel(child), f"cancel:{child.run_id}")

    def cancel_soon(self, run_id: str, cancel: Cancel) -> None:
        """Cancel a started run durably, without waiting (``cancel-in-progress``)."""

        async def request() -> None:
            run = await self._storage.execute(storage.RequestCancel(
                run_id, self._clock.now(), cancel.reason, cancel.compensate, cancel.code))
            if not run.is_terminal:
                self._carry_out(run, cancel)

        self._spawn(request(), f"cancel:{run_id}")

    # ------------------------------------------------------------------ pause

    async def pause(self, r: service.Pause) -> JSONDict:
        run_id, workflow_id = _target(r.run_id, r.workflow_id)
        if workflow_id is not None:
            return await self.pause_workflow(workflow_id)
        assert run_id is not None
        run = await self.pause_run(await self._run_or_404(run_id))
        if not run.is_terminal and run.status is not _RUN_STATUS.PAUSED and (
            self._supervisor.has_actor(run_id)
            # In a cluster a running run may have its actor on another daemon.
            or (self._supervisor.owner is not None and run.status is _RUN_STATUS.RUNNING)
        ):
            # Running: held once its in-flight step is recorded. Answer then (or after the
            # grace); the pause is durable either way.
            run = await self._wait_until(run_id, lambda r: r.status is _RUN_STATUS.PAUSED,
                                         self._settings.shutdown_grace)
        return views.run(run)

    async def pause_run(self, run: storage.RunRecord) -> storage.RunRecord:
        """Pause ``run`` (see the module's docstring); returns it as stored."""
        if run.is_terminal:
            raise errors.RunNotActive(run.run_id, str(run.status), "pause")
        if run.paused:
            return run
        with self.holds.changing(run.run_id):
            return await self._pause_run(run)

    async def _pause_run(self, run: storage.RunRecord) -> storage.RunRecord:
        # In memory first: from here on its actor holds it and deliveries are kept, so a park
        # or a resolution racing with the commit below cannot slip past the pause.
        self.holds.pause(run.run_id)
        try:
            stored = await self._storage.execute(
                storage.RequestPause(run.run_id, self._clock.now()))
        except BaseException:
            self.holds.resume(run.run_id)
            raise
        if stored.is_terminal:
            self.holds.forget(run.run_id)
            return stored
        if stored.status is _RUN_STATUS.PENDING and not self._supervisor.knows(run.run_id):
            self._admission.hold(stored)
        elif stored.status is _RUN_STATUS.PAUSED:
            self._supervisor.publish_state(run.run_id, "paused", run.workflow_id)
        log.info("run.pause_requested", run_id=run.run_id, workflow_id=run.workflow_id,
                 status=str(stored.status))
        return stored

    async def pause_workflow(self, workflow_id: str) -> JSONDict:
        if self._registry.get(workflow_id) is None:
            raise errors.NotFound("workflow", workflow_id)
        await self._storage.execute(
            storage.SetWorkflowPaused(workflow_id, True, self._clock.now()))
        self.holds.workflows.add(workflow_id)
        self._admission.hold_workflow(workflow_id)
        log.info("workflow.paused", workflow_id=workflow_id)
        return {"workflow_id": workflow_id, "paused": True}

    # ------------------------------------------------------------------ resume

    async def resume(self, r: service.Resume) -> JSONDict:
        run_id, workflow_id = _target(r.run_id, r.workflow_id)
        if workflow_id is not None:
            return await self.resume_workflow(workflow_id)
        assert run_id is not None
        run = await self.resume_run(await self._run_or_404(run_id), start_delayed=True)
        if run.status is _RUN_STATUS.PAUSED:
            # Held mid-body: its actor commits "running" as the held branches go on.
            run = await self._wait_until(run_id, lambda r: r.status is not _RUN_STATUS.PAUSED,
                                         self._settings.shutdown_grace)
        return views.run(run)

    async def resume_run(
        self, run: storage.RunRecord, *, start_delayed: bool = False
    ) -> storage.RunRecord:
        """Lift ``run``'s pause and move it on; with ``start_delayed`` a delayed pending run
        that is not paused starts now (the rule of ``resume`` before pauses existed)."""
        if run.is_terminal or not (run.paused or run.status is _RUN_STATUS.PAUSED):
            if (start_delayed and run.status is _RUN_STATUS.PENDING
                    and run.scheduled_at is not None):
                try:
                    return await self._admission.reschedule(run, None)
                except storage.InvalidOperation as exc:
                    raise errors.RunNotActive(run.run_id, "running", "resume") from exc
            raise errors.RunNotActive(run.run_id, str(run.status), "resume")
        with self.holds.changing(run.run_id):
            return await self._resume_run(run)

    async def _resume_run(self, run: storage.RunRecord) -> storage.RunRecord:
        live = self._supervisor.has_actor(run.run_id)
        # A run held mid-body by its actor commits "running" itself as it goes on; a parked
        # one is "waiting" with its resume flag set (recovery restarts it if we crash now).
        status: storage.RunStatus | storage.ops.Unset = (
            storage.UNSET if live or run.status is _RUN_STATUS.PENDING
            else _RUN_STATUS.WAITING)
        stored = await self._storage.execute(
            storage.ResumeRun(run.run_id, self._clock.now(), status))
        kept = self.holds.resume(run.run_id) or []
        log.info("run.resume_requested", run_id=run.run_id, workflow_id=run.workflow_id,
                 kept=len(kept))
        if stored.status is _RUN_STATUS.PENDING:
            if not self._supervisor.knows(run.run_id):
                stored = await self._admission.release(stored)
            return stored
        if stored.status is _RUN_STATUS.WAITING and run.status is _RUN_STATUS.PAUSED:
            self._supervisor.publish_state(run.run_id, "waiting", run.workflow_id)
        if live or self._supervisor.drives(run.run_id):
            self._supervisor.resume_held(run.run_id, kept)
        # else another daemon drives it (its move pass resumes it, woken by NOTIFY), or nobody
        # does yet (whoever claims it finds it waiting with its resume flag set).
        return stored

    def paused_elsewhere(self, run: storage.RunRecord) -> None:
        """Another daemon paused ``run``, which this daemon drives: hold it here as if paused
        here (its actor stops before the next step, resolutions are kept for the resume)."""
        if not self.holds.is_paused(run.run_id):
            self.holds.pause(run.run_id)
            log.info("run.paused_elsewhere", run_id=run.run_id, workflow_id=run.workflow_id)

    def resumed_elsewhere(self, run: storage.RunRecord) -> None:
        """A run held here whose pause another daemon lifted (or that ended there): lift it
        here too, as after a resume of ours. A run parked here replays its journal rather
        than going on warm: resolutions recorded by other daemons meanwhile are only there."""
        kept = self.holds.resume(run.run_id)
        if kept is None or run.is_terminal:
            return
        log.info("run.resumed_elsewhere", run_id=run.run_id, workflow_id=run.workflow_id,
                 kept=len(kept))
        if run.status is _RUN_STATUS.PENDING:
            if not self._supervisor.knows(run.run_id):
                self._spawn(self._admission.release(run), f"release:{run.run_id}")
        elif self._supervisor.has_actor(run.run_id):
            self._supervisor.resume_held(run.run_id, kept)  # held mid-body: it goes on
        elif self._supervisor.drives(run.run_id):
            self._supervisor.resume_from_journal(run.run_id)

    async def resume_workflow(self, workflow_id: str) -> JSONDict:
        if self._registry.get(workflow_id) is None and workflow_id not in self.holds.workflows:
            raise errors.NotFound("workflow", workflow_id)
        await self._storage.execute(
            storage.SetWorkflowPaused(workflow_id, False, self._clock.now()))
        self.holds.workflows.discard(workflow_id)
        released = await self._admission.release_workflow(workflow_id)
        log.info("workflow.resumed", workflow_id=workflow_id, released=released)
        return {"workflow_id": workflow_id, "paused": False}

    # ------------------------------------------------------------------ retry

    async def retry(self, r: service.Retry) -> JSONDict:
        return views.run(await self.retry_run(await self._run_or_404(r.run_id), r.mode))

    async def retry_run(self, run: storage.RunRecord, mode: str) -> storage.RunRecord:
        """Make ``run`` (ended, not completed) pending again and offer it to admission, with
        the children a ``resume`` retries along; returns it as it stands."""
        if not run.is_terminal or run.status is _RUN_STATUS.COMPLETED:
            raise errors.RunNotActive(run.run_id, str(run.status), "retry")
        try:
            retried = await self._storage.execute(
                storage.RetryRun(run.run_id, self._clock.now(), mode))
        except storage.InvalidOperation as exc:  # it changed since it was read
            status = str(exc.data.get("status", run.status))
            raise errors.RunNotActive(run.run_id, status, "retry") from exc
        first: storage.RunRecord | None = None
        for again in retried.runs:
            log.info("run.retried", run_id=again.run_id, workflow_id=again.workflow_id,
                     mode=mode, attempt=again.attempt)
            self._supervisor.publish_state(again.run_id, "pending", again.workflow_id)
            offered = await self._admission.offer(again)
            first = first or offered
        assert first is not None
        return first

    # ------------------------------------------------------------------ bulk

    async def bulk(self, r: service.Bulk) -> JSONDict:
        found = protocol.validate_filter(r.filter)
        status = found.get("status")
        search = found.get("search")
        if search is not None and len(search) < storage.SEARCH_MIN_CHARS:
            raise errors.InvalidParams("filter.search",
                                       f"at least {storage.SEARCH_MIN_CHARS} characters",
                                       repr(search))
        runs = await self._storage.list_runs(
            status=_RUN_STATUS(status) if status else None,
            workflow_id=found.get("workflow_id"),
            tag=found.get("tag"),
            since=found.get("since"),
            until=found.get("until"),
            search=search,
            limit=None,
        )
        eligible = [run for run in runs if _applies(r.action, run)]
        out: JSONDict = {"matched": len(runs), "eligible": len(eligible), "done": 0}
        if r.dry_run:
            return {**out, "dry_run": True}
        act = self._action(r)
        done = 0
        for start in range(0, len(eligible), BULK_CHUNK):
            chunk = eligible[start:start + BULK_CHUNK]
            done += sum(await asyncio.gather(*(self._try(act(run)) for run in chunk)))
        log.info("bulk.applied", action=r.action, matched=len(runs), done=done)
        return {**out, "done": done}

    def _action(
        self, r: service.Bulk
    ) -> Callable[[storage.RunRecord], Coroutine[Any, Any, storage.RunRecord]]:
        if r.action == "cancel":
            return lambda run: self.cancel_run(run, r.reason, r.compensate)
        if r.action == "pause":
            return self.pause_run
        if r.action == "resume":
            return self.resume_run
        return lambda run: self.retry_run(run, r.mode)

    @staticmethod
    async def _try(action: Awaitable[storage.RunRecord]) -> bool:
        """Apply one run's action; False when the run moved to a state it does not apply to
        since it was read (it is skipped, as the others in the wrong state were)."""
        try:
            await action
        except (errors.RunNotActive, errors.NotFound, storage.InvalidOperation,
                storage.NotFound):
            return False
        return True

    # ------------------------------------------------------------------ helpers

    async def _wait_until(
        self, run_id: str, done: Callable[[storage.RunRecord], bool], timeout: float
    ) -> storage.RunRecord:
        """The run once ``done(run)`` or it has ended, or as it stands after ``timeout``."""
        queue = self._supervisor.listen_state(run_id)
        try:
            run = await self._run_or_404(run_id)
            deadline = asyncio.get_running_loop().time() + timeout
            while not done(run) and not run.is_terminal:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                # Re-read at least every RECHECK: the change may be another daemon's and its
                # announcement lost (SPEC §13).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.get(), min(remaining, RECHECK))
                run = await self._run_or_404(run_id)
            return run
        finally:
            self._supervisor.unlisten_state(run_id, queue)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` as a task this object owns (cancelled at close)."""
        self._spawn(coro, name)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Storage trouble: the request is durable, recovery carries it out.
            log.warning("run.operation_failed", task=task.get_name(),
                        error=repr(task.exception()))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


def _target(run_id: str | None, workflow_id: str | None) -> tuple[str | None, str | None]:
    """A run or a workflow, exactly one of them (``INVALID_PARAMS`` naming the field)."""
    if run_id is not None and workflow_id is not None:
        raise errors.InvalidParams("workflow_id", "either run_id or workflow_id, not both",
                                   "both")
    if run_id is None and workflow_id is None:
        raise errors.InvalidParams("run_id", "a run id (or workflow_id)", "nothing (missing)")
    return run_id, workflow_id


def _applies(action: str, run: storage.RunRecord) -> bool:
    """Whether ``action`` applies to ``run`` in its current state (bulk skips the others)."""
    if action == "cancel":
        return not run.is_terminal
    if action == "pause":
        return not run.is_terminal and not run.paused and run.status is not _RUN_STATUS.PAUSED
    if action == "resume":
        return not run.is_terminal and (run.paused or run.status is _RUN_STATUS.PAUSED)
    return run.is_terminal and run.status is not _RUN_STATUS.COMPLETED

