"""The state a run's ctx operations share, and the host work they start.

Every ``ctx`` module (steps, streams, waitables, context, compensation) works on one
:class:`RunState`; the executor (``runtime.executor``) owns the driver and builds the state, and
nothing here imports it back.

Two sides meet here. The *body side* runs on the run's :class:`~runtime.bodyloop.BodyLoop`:
``check_live``, ``wait_on``, ``register``, ``record``, ``flush_metadata``, ``on_host``. The *host
side* runs on the host loop (the daemon's): ``record_on_host``, ``commit``, ``resolve``,
``interrupt``. The body reaches the host only through ``on_host``: a host job, run in a host task
and handed back on a body future (a :class:`HostJob`); the body loop counts it as pending work
until it ends, so a body waiting for host work is never taken for parked.

The step path is one hop. A host task that finishes a job runs the body's next slice itself;
a job the body asks for in that slice starts right there, on that task (the host's current
task, the host loop set as the running loop), and if it suspends, that task goes on with it.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from asyncio import events
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from runtime import _signals, errors
from runtime.bodyloop import BodyLoop
from runtime.determinism import DeterministicRandom
from runtime.facts import HostServices, RunFacts
from runtime.journal import (
    Entry,
    Journal,
    MetadataOp,
    StepAttempt,
    WaitpointRegistered,
    is_body_waitpoint,
)
from runtime.journal import WaitpointResolved as WaitpointResolved
from runtime.retry import RetryPolicy
from runtime.workflow import WorkflowDefinition

T = TypeVar("T")

PATCH_PREFIX = "patch:"
"""Step ids of patch markers (``ctx.patched``): recorded as steps, so every backend, export
and the journal's total order hold them with no new entry kind."""


@dataclass(slots=True)
class Compensable:
    """A completed step's compensation, registered in completion order."""

    step_id: str
    output: Any
    fn: Callable[[Any], Any]


class HostJob(asyncio.Future[Any]):
    """The body's future of one piece of host work, and the handle on that work.

    An *interruptible* job (a step attempt, a gate, a stream's source) is stopped by a run
    cancel, a close or the compute budget, and when the body stops waiting for it (cancels
    this future). A job that is committing an entry is not: the durable outcome must be known,
    and the journal must hold it whether or not the body still waits. ``hold()`` switches a job
    to that phase.
    """

    __slots__ = ("interruptible", "started", "stopped", "task")

    interruptible: bool
    started: bool
    stopped: bool  # we stopped it (interrupt, or the body gave up on it)
    task: asyncio.Task[None] | None

    def hold(self) -> None:
        self.interruptible = False

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self.stop()  # the body gave up on the result: stop the work if it may be stopped
        return True

    def stop(self) -> None:
        if self.interruptible and not self.stopped and self.task is not None:  # not settled
            self.stopped = True
            # A task cancelled before its first step never enters its coroutine (no finally
            # runs); one not started yet sees the flag when it starts instead.
            if self.started and not self.task.done():
                self.task.cancel()


class _Returned:
    """What a host job returned (an exception is passed as itself)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Handoff:
    """A host task that finished a job and runs the body's slice: it may take the next job."""

    __slots__ = ("next", "task")

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task
        self.next: tuple[HostJob, Generator[Any, Any, Any]] | None = None


@types.coroutine
def _continue(
    context: contextvars.Context, coro: Coroutine[Any, Any, T], yielded: Any
) -> Generator[Any, Any, T]:
    """Await the rest of ``coro``, already stepped once (it gave ``yielded``), in ``context``.

    What ``yield from`` would do, on a task that is not the one that started the coroutine:
    each step runs in the job's own context, and a cancel thrown in goes on to the coroutine.
    """
    while True:
        try:
            value = yield yielded
        except BaseException as exc:  # a cancel thrown in by the task: pass it on
            step: Callable[[Any], Any] = coro.throw
            arg: Any = exc
        else:
            step, arg = coro.send, value
        try:
            yielded = context.run(step, arg)
        except StopIteration as stop:
            result: T = stop.value
            return result


class RunState:
    """One run's journal, counters and host, shared by the ctx operations of its body."""

    __slots__ = (
        "_handoff", "_pending_meta", "blocked", "cancel_request", "clock_at", "closed",
        "compensable", "consumed_steps", "consumed_wps", "counters", "deadlock", "default_retry",
        "definition", "divergences", "facts", "finished", "frontier", "held", "host",
        "host_failure", "input", "jobs", "journal", "loop", "metadata_index", "patches",
        "pending", "random", "seen_steps", "step_position",
        "streams_seen", "timed_out",
    )

    def __init__(
        self,
        definition: WorkflowDefinition,
        input: Any,
        facts: RunFacts,
        journal: Journal,
        host: HostServices,
    ) -> None:
        self.definition = definition
        self.input = input
        self.facts = facts
        self.journal = journal
        self.host = host
        self.random = DeterministicRandom(facts.run_id)
        self.clock_at = facts.started_at
        self.default_retry: RetryPolicy | None = definition.retry
        self.seen_steps: set[str] = set()
        self.consumed_steps: set[str] = set()
        self.step_position = 0
        self.counters: dict[str, int] = {}
        self.metadata_index = 0
        self.compensable: list[Compensable] = []
        self.divergences: list[dict[str, Any]] = []
        # Divergence detection (SPEC §3): the body's waitpoints a replay reached, the branches
        # held before new work until every branch consumed what it could of the journal, and
        # the divergence that holds the run (nothing new may run after it).
        self.consumed_wps: set[str] = set()
        self.frontier: list[tuple[asyncio.Future[bool], dict[str, Any]]] = []
        self.held: dict[str, Any] | None = None
        self.patches: dict[str, bool] = {}  # ctx.patched answers, memoized per execution
        self.streams_seen: set[str] = set()
        # Waitpoints the body is blocked on (registration, and the body future it awaits).
        self.pending: dict[str, WaitpointRegistered] = {}
        self.blocked: dict[str, asyncio.Future[WaitpointResolved]] = {}
        self.jobs: dict[HostJob, None] = {}  # a dict: light while empty (parked runs)
        self.loop: BodyLoop | None = None  # set by the executor before the body starts
        self.cancel_request: tuple[str | None, bool] | None = None
        self.closed = False
        self.finished = False
        self.timed_out = False
        self.deadlock: str | None = None  # what the body was stuck on, once declared
        self.host_failure: _signals.HostFailure | None = None
        self._pending_meta: list[MetadataOp] = []
        self._handoff: _Handoff | None = None  # the host task running the body's slice

    # ----------------------------------------------------------------- run facts

    def signal(self) -> _signals.InternalSignal | None:
        """The internal signal that must stop the body now, if any."""
        if self.host_failure is not None:
            return _signals.HostFailure(self.host_failure.cause)
        if self.closed or self.finished:
            return _signals.Suspended()
        if self.cancel_request is not None:
            return _signals.RunCancelled(self.cancel_request[0])
        if self.timed_out:
            return _signals.WorkflowTimedOut(self.definition.timeout or 0.0)
        if self.deadlock is not None:
            return _signals.NonDurableAwait(self.deadlock)
        if self.held is not None:
            return _signals.Diverged(self.held)
        return None

    def check_live(self) -> None:
        """Raise the right internal signal if the body must not start anything new."""
        if (
            self.host_failure is None
            and self.cancel_request is None
            and not (self.closed or self.finished or self.timed_out)
            and self.deadlock is None
            and self.held is None
        ):
            return  # the hot path: one call per step
        signal = self.signal()
        if signal is not None:
            raise signal

    def next_index(self, key: str) -> int:
        n = self.counters.get(key, 0)
        self.counters[key] = n + 1
        return n

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock_at, UTC)

    def advance_clock(self, at: float) -> None:
        if at > self.clock_at:
            self.clock_at = at

    # ----------------------------------------------------------------- divergence

    def has_unconsumed(self) -> bool:
        """Recorded steps or body waitpoints the replay has not reached yet (O(1))."""
        journal = self.journal
        return (len(self.consumed_steps) != len(journal.steps)
                or len(self.consumed_wps) != journal.body_registrations)

    def unconsumed(self) -> dict[str, list[str]]:
        """Which recorded entries the replay has not reached, by kind."""
        journal = self.journal
        steps = sorted(set(journal.steps) - self.consumed_steps)
        found = {
            "step_ids": [s for s in steps if not s.startswith(PATCH_PREFIX)],
            "waitpoint_ids": sorted(
                wp for wp in journal.registrations
                if is_body_waitpoint(wp) and wp not in self.consumed_wps
            ),
        }
        patches = [s[len(PATCH_PREFIX):] for s in steps if s.startswith(PATCH_PREFIX)]
        if patches:  # markers the code never asked for (a patch removed too early)
            found["patch_ids"] = patches
        return found

    def diverge(self, detail: dict[str, Any]) -> _signals.Diverged:
        """Hold the run on ``detail``: every branch unwinds, nothing new runs."""
        if self.held is None:
            self.held = detail
            self.divergences.append(detail)
            self.interrupt(lambda: _signals.Diverged(detail))
            for fut, _ in self.frontier:
                if not fut.done():
                    fut.set_exception(_signals.Diverged(detail))
            self.frontier.clear()
        return _signals.Diverged(self.held)

    async def at_frontier(self, what: dict[str, Any]) -> bool:
        """Before new work (a step never recorded, a new waitpoint): while recorded entries
        are unconsumed, wait until no branch can consume more (the executor decides then:
        the work goes on, or the run diverged with ``what`` inserted before recorded entries).
        Branches of a parallel body legitimately reach new work before a sibling consumed its
        recorded entries, so the check is at quiescence, not at the call.

        True: at the frontier. False only for a ``{"patch": id}`` asked while the journal goes
        on past this point (the run got here on old code): that branch takes the old path."""
        if not self.has_unconsumed():
            return True
        loop = self.loop
        assert loop is not None
        fut: asyncio.Future[bool] = loop.create_future()
        self.frontier.append((fut, what))
        at = await fut
        self.check_live()
        return at

    def settle_frontier(self) -> None:
        """The body is quiescent with branches at the frontier: release them, or diverge."""
        waiting, self.frontier = self.frontier, []
        if self.has_unconsumed():
            patches = [(fut, what) for fut, what in waiting if "patch" in what]
            if patches:
                # Recorded entries lie past these patch calls: the old path, which may consume
                # them; the other branches wait for the next quiescence.
                self.frontier = [(f, w) for f, w in waiting if "patch" not in w]
                for fut, _ in patches:
                    if not fut.done():
                        fut.set_result(False)
                return
            self.frontier = waiting
            self.diverge(
                {"kind": "inserted", "new": waiting[0][1], "unconsumed": self.unconsumed()}
            )
            return
        for fut, _ in waiting:
            if not fut.done():
                fut.set_result(True)

    def reached_waitpoint(self, wp_id: str, make: Callable[[], WaitpointRegistered]) -> None:
        """A replay reached recorded waitpoint ``wp_id``: the code must mean the same wait."""
        if wp_id in self.consumed_wps or not is_body_waitpoint(wp_id):
            return
        self.consumed_wps.add(wp_id)
        recorded = self.journal.registrations[wp_id]
        mismatch = waitpoint_mismatch(recorded, make())
        if mismatch is not None:
            raise self.diverge({"kind": "waitpoint", "wp_id": wp_id, **mismatch})

    # ----------------------------------------------------------------- body side

    def on_host(
        self,
        fn: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        interruptible: bool = True,
    ) -> asyncio.Future[T]:
        """Start ``fn(job, *args)`` on the host loop; return a body future of its result.

        ``interruptible`` says whether a cancel, a close, the compute budget, or the body
        giving up on the future cancels the host task.
        """
        loop = self.loop
        assert loop is not None
        if not loop._running:
            # Body code outside a slice: a parked body let go of and closed by the garbage
            # collector (GeneratorExit) that tries to go on. Start nothing for it.
            raise _signals.Suspended()
        job = HostJob(loop=loop)
        job.interruptible = interruptible
        job.started = job.stopped = False
        work = fn(job, *args)
        worker = self._handoff
        if worker is not None and worker.next is None:
            # Asked from the slice a host task runs as it finishes its own job: that task is
            # the host's current task, so the job starts right here, on the host, in a copy
            # of the body's context. No new task and no loop turn: if the job does not
            # suspend, the body never does either; if it does, that task goes on with it.
            job.task = worker.task
            job.started = True
            context = contextvars.copy_context()
            events._set_running_loop(loop.host)
            try:
                yielded = context.run(work.send, None)
            except StopIteration as stop:
                if not job.stopped:  # the common case: done at once, the body goes straight on
                    job.interruptible = False
                    job.set_result(stop.value)
                    return job
                self._settle(job, _Returned(stop.value), worker.task)
                return job
            except BaseException as exc:  # settled on the body future, never raised here
                self._settle(job, exc, worker.task)
                return job
            finally:
                events._set_running_loop(loop)
            worker.next = (job, _continue(context, work, yielded))
        else:
            job.task = loop.host.create_task(self._host_worker(job, work))
        loop.jobs += 1
        self.jobs[job] = None
        return job

    async def _host_worker(self, job: HostJob, work: Awaitable[Any]) -> None:
        """Run host jobs one after the other on this task, as long as the body hands it more.

        After each job the task runs the body's next slice itself (``host_work_done``); a job
        the body asks for in that slice is started there and finished here. Never raises:
        what a job raises goes to its body future.
        """
        loop = self.loop
        assert loop is not None
        task = asyncio.current_task()
        assert task is not None
        handoff = _Handoff(task)
        jobs = self.jobs
        while True:
            job.started = True
            outcome: BaseException | None = None
            value: Any = None
            if job.stopped:  # stopped before it started
                if isinstance(work, Coroutine | Generator):
                    work.close()
                outcome = asyncio.CancelledError()
            else:
                try:
                    value = await work
                except BaseException as exc:  # user code must not reach the host loop
                    outcome = exc
            loop.jobs -= 1
            jobs.pop(job, None)
            if outcome is None and not (job.stopped or job.done()):
                # The step path: hand the value over. The body's wake-up is only queued on its
                # loop (no driver wake): host_work_done runs it right here.
                job.interruptible = False
                loop._deferring = True
                job.set_result(value)
                loop._deferring = False
            else:
                loop._deferring = True  # as above
                try:
                    self._settle(job, _Returned(value) if outcome is None else outcome, task)
                finally:
                    loop._deferring = False
            handoff.next = None
            outer, self._handoff = self._handoff, handoff
            try:
                loop.host_work_done()
            finally:
                self._handoff = outer
            if handoff.next is None:
                return
            job, work = handoff.next

    def _settle(self, job: HostJob, outcome: Any, task: asyncio.Task[None]) -> None:
        """Hand a job's outcome (a ``_Returned`` or an exception) to its body future."""
        if job.stopped:
            while task.cancelling():  # ours: the task goes on with the next job
                task.uncancel()
        job.interruptible = False  # settled: nothing left to stop
        if job.done():
            return  # the body gave up on it
        if isinstance(outcome, _Returned):
            job.set_result(outcome.value)
        elif isinstance(outcome, asyncio.CancelledError):
            signal = self.signal() if job.stopped else None
            if signal is not None:
                job.set_exception(signal)
            else:
                asyncio.Future.cancel(job)  # not ours: the host task itself was cancelled
        else:
            if isinstance(outcome, _signals.HostFailure) and self.host_failure is None:
                self.host_failure = outcome
            job.set_exception(outcome)

    async def record(self, entry: Entry) -> None:
        """Make ``entry`` durable (on the host), then return: the journal already holds it."""
        await self.on_host(_record_job, self, entry, interruptible=False)

    def queue_metadata(self, op: MetadataOp) -> None:
        self._pending_meta.append(op)

    async def flush_metadata(self) -> None:
        if self._pending_meta:
            await self.on_host(_flush_job, self, interruptible=False)

    async def wait_on(
        self, wp_id: str, make: Callable[[], WaitpointRegistered]
    ) -> WaitpointResolved:
        """Register waitpoint ``wp_id`` (once, durably) and wait for its resolution."""
        if wp_id in self.journal.registrations:
            self.reached_waitpoint(wp_id, make)
        resolution = self.journal.resolutions.get(wp_id)
        if resolution is None:
            self.check_live()
            if wp_id not in self.journal.registrations:
                await self.at_frontier({"waitpoint": wp_id})
                reg = make()
                await self.record(reg)
                if is_body_waitpoint(wp_id):
                    self.consumed_wps.add(wp_id)
            resolution = self.journal.resolutions.get(wp_id)
        if resolution is None:
            resolution = await self._block(wp_id)
        self.advance_clock(resolution.resolved_at)
        return resolution

    async def register(self, reg: WaitpointRegistered) -> WaitpointRegistered:
        """Record a waitpoint without waiting on it (tokens, detached children)."""
        existing = self.journal.registrations.get(reg.wp_id)
        if existing is not None:
            self.reached_waitpoint(reg.wp_id, lambda: reg)
            return existing
        self.check_live()
        await self.at_frontier({"waitpoint": reg.wp_id})
        await self.record(reg)
        self.consumed_wps.add(reg.wp_id)
        return self.journal.registrations[reg.wp_id]

    async def _block(self, wp_id: str) -> WaitpointResolved:
        await self.flush_metadata()  # what the body set before parking is visible while parked
        resolution = self.journal.resolutions.get(wp_id)  # resolved while the metadata flushed
        if resolution is not None:
            return resolution
        self.check_live()
        fut: asyncio.Future[WaitpointResolved] = asyncio.Future(loop=self.loop)
        self.blocked[wp_id] = fut
        self.pending[wp_id] = self.journal.registrations[wp_id]
        try:
            return await fut
        finally:
            self.blocked.pop(wp_id, None)
            self.pending.pop(wp_id, None)
            # A signal thrown in through ``fut`` keeps this frame in its traceback, and ``fut``
            # keeps the signal: drop the frame's end of that cycle, so a closed (cold-parked)
            # run is freed by reference counting, not left for the cyclic collector.
            del fut

    # ----------------------------------------------------------------- host side

    async def record_on_host(self, entry: Entry) -> None:
        """Check the journal limit, flush queued metadata, then commit ``entry``."""
        limit = self.host.limits.max_journal_entries
        if limit is not None and self.journal.size >= limit:
            raise errors.FatalError(
                f"run {self.facts.run_id} reached limits.max_journal_entries={limit}",
                code="JOURNAL_LIMIT",
                data={"limit": limit},
            )
        if self._pending_meta:
            await self.flush_on_host()
        await self.commit(entry)

    async def flush_on_host(self) -> None:
        ops, self._pending_meta = self._pending_meta, []
        for op in ops:
            await self.commit(op)

    async def commit(self, entry: Entry) -> None:
        """Make ``entry`` durable through the host and fold it into the journal at once."""
        if self.finished:
            raise _signals.Suspended()  # a branch left running after the run ended
        try:
            resolutions = await self.host.record(entry)
        except _signals.InternalSignal:
            raise
        except BaseException as exc:
            failure = _signals.HostFailure(exc)
            self.host_failure = failure
            raise failure from exc
        self.journal.apply(entry)
        if isinstance(entry, StepAttempt):
            self.consumed_steps.add(entry.step_id)
        for resolution in resolutions:
            self.resolve(resolution)

    def resolve(self, resolution: WaitpointResolved) -> None:
        """Fold a durable resolution in and wake the branch blocked on it, if any."""
        self.journal.apply(resolution)
        self.pending.pop(resolution.wp_id, None)
        fut = self.blocked.get(resolution.wp_id)
        if fut is not None and not fut.done():
            fut.set_result(resolution)

    def interrupt(self, make: Callable[[], BaseException]) -> None:
        """Throw ``make()`` into every blocked branch and cancel interruptible host work."""
        for fut in list(self.blocked.values()):
            if not fut.done():
                fut.set_exception(make())
        for job in list(self.jobs):
            job.stop()


async def _record_job(job: HostJob, state: RunState, entry: Entry) -> None:
    await state.record_on_host(entry)


async def _flush_job(job: HostJob, state: RunState) -> None:
    await state.flush_on_host()


# Meta keys that may differ between a recording and its replay without changing the wait's
# meaning: derived from the clock, or data the child receives rather than which child it is.
_VOLATILE_META = frozenset({"lookback_from", "input", "tags", "idempotency_key"})


def waitpoint_mismatch(
    recorded: WaitpointRegistered, now: WaitpointRegistered
) -> dict[str, Any] | None:
    """How the code's wait ``now`` differs from the ``recorded`` one, or None if it means the
    same: kind, due time (the same duration or the same instant), event type, match, signal
    name, token id, child workflow."""
    if recorded.kind != now.kind:
        return {"field": "kind", "recorded": str(recorded.kind), "found": str(now.kind)}
    if recorded.due_at is not None and now.due_at is not None:
        same_instant = abs(recorded.due_at - now.due_at) < 1e-6
        same_duration = abs(
            (recorded.due_at - recorded.registered_at) - (now.due_at - now.registered_at)
        ) < 1e-6
        if not (same_instant or same_duration):
            return {
                "field": "due",
                "recorded": recorded.due_at - recorded.registered_at,
                "found": now.due_at - now.registered_at,
            }
    keys = (set(recorded.meta) | set(now.meta)) - _VOLATILE_META
    for key in sorted(keys):
        if recorded.meta.get(key) != now.meta.get(key):
            return {"field": key, "recorded": recorded.meta.get(key), "found": now.meta.get(key)}
    return None
