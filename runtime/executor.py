"""The executor: runs one workflow body against its journal.

An :class:`Execution` drives one run. The body runs on an event loop of its own (a
:class:`~runtime.bodyloop.BodyLoop`); ``advance()``, a coroutine on the host loop, runs that
loop's ready handles in slices and otherwise waits for something to become ready. Everything
that does real work (a step, a commit, a thread job) runs on the host loop and is handed back to
the body; each entry is folded into the journal once the host says it is durable, so the body
never continues past something that could be lost.

``advance()`` returns when the body ends, or when it is *parked*: nothing is ready, no host work
and no body timer is pending, and the body is blocked on at least one unresolved ctx waitpoint.
Nothing the engine can see could then move it but a resolution, so this is known, not guessed.
A body blocked on something else that nothing will finish (a foreign future) fails with
``NON_DURABLE_AWAIT`` after ``limits.deadlock_timeout``.

After ``waiting`` the host either keeps the execution (a *warm* run: the body stays suspended
on its loop, and ``resolve()`` + ``advance()`` continue it without replay) or calls ``close()``
(a *cold* run: the body is unwound with an internal signal, and a later execution replays it).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from runtime import _signals, errors, serialization
from runtime._state import RunState
from runtime.bodyloop import BodyLoop, new_body_loop
from runtime.compensation import run_compensations
from runtime.context import Context
from runtime.facts import HostServices, Outcome, RunFacts
from runtime.journal import CompensationRan, Journal, WaitpointResolved
from runtime.status import RunStatus
from runtime.workflow import WorkflowDefinition

# How long close() lets a body unwind from the Suspended signal before cancelling it, and then
# how long it waits for the cancelled body before leaving it behind.
_CLOSE_GRACE = 5.0
_CLOSE_HARD_STOP = 1.0


class Execution:
    """One run's body, its journal and its host. Not thread-safe; one host loop."""

    __slots__ = (
        "_cancel_code", "_driving", "_given_up", "_hard_stop", "_loop", "_state", "_task",
        "compute_used",
    )

    def __init__(
        self,
        definition: WorkflowDefinition,
        input: Any,
        facts: RunFacts,
        journal: Journal,
        host: HostServices,
    ) -> None:
        self._state = RunState(definition, input, facts, journal, host)
        self.compute_used = facts.compute_used
        self._loop: BodyLoop | None = None
        self._task: asyncio.Task[Outcome] | None = None
        self._driving = False
        self._hard_stop = False
        self._given_up: Outcome | None = None  # a body that would not unwind from a deadlock
        self._cancel_code = "CANCELLED"

    # ----------------------------------------------------------------- host-facing API

    @property
    def definition(self) -> WorkflowDefinition:
        return self._state.definition

    @property
    def facts(self) -> RunFacts:
        return self._state.facts

    @property
    def journal(self) -> Journal:
        return self._state.journal

    @property
    def host(self) -> HostServices:
        return self._state.host

    @property
    def done(self) -> bool:
        return self._given_up is not None or (self._task is not None and self._task.done())

    @property
    def is_cancelled(self) -> bool:
        return self._state.cancel_request is not None

    async def advance(self) -> Outcome:
        """Run the body until it ends or parks on waitpoints; return where it stands."""
        state = self._state
        if state.closed:
            raise RuntimeError("advance() on a closed execution")
        if self._given_up is not None:
            return self._given_up
        if self._driving:
            raise RuntimeError("advance() while another advance() drives this execution")
        host = asyncio.get_running_loop()
        loop = self._body_loop(host)
        started = host.time()
        budget = self._arm_budget(host)
        if self._task is None:
            self._task = loop.create_task(self._main(), name=f"body:{state.facts.run_id}")
            loop.main = self._task
        self._driving = True
        try:
            parked = await self._drive(loop, park=True, until=None)
        finally:
            self._driving = False
            if budget is not None:
                budget.cancel()
            self.compute_used += host.time() - started
        if not parked:
            if self._task is not None and self._task.done():
                # The loop no longer needs its main task, and a task refers to its loop: drop
                # the loop's end of that cycle, so an ended run is freed by reference counting
                # and never reaches the cyclic collector (1000 runs at once pay for it per step).
                loop.main = None
            return await self._result(loop)
        return Outcome(
            status=RunStatus.WAITING,
            waiting_on=tuple(state.pending.values()),
            divergence=self._divergence(),
            compute_used=self.compute_used,
        )

    def resolve(self, resolution: WaitpointResolved) -> None:
        """Deliver a resolution the host has already made durable (wakes a waiting driver)."""
        self._state.resolve(resolution)

    def cancel(
        self, reason: str | None = None, *, compensate: bool = True, code: str = "CANCELLED"
    ) -> None:
        """Cancel the run: the in-flight step is cancelled and the body unwinds at its next
        ctx await. Call ``advance()`` afterwards to run compensations and get the outcome,
        ``cancelled`` with error ``code`` (``CONCURRENCY_REPLACED`` when a newcomer replaced
        the run)."""
        state = self._state
        if state.cancel_request is None:
            state.cancel_request = (reason, compensate)
            self._cancel_code = code
        state.interrupt(lambda: _signals.RunCancelled(reason))

    async def close(self) -> None:
        """Unwind a parked body (park cold). Nothing it does afterwards is recorded."""
        state = self._state
        state.closed = True
        task, loop = self._task, self._loop
        if task is None or loop is None or self.done:
            if loop is not None:
                loop.mark_closed()
            return
        state.interrupt(_signals.Suspended)
        host = asyncio.get_running_loop()
        if self._driving:  # an advance() in progress drives the body: let it unwind there
            ended: asyncio.Future[None] = host.create_future()

            def on_end(_: object) -> None:
                if not ended.done():
                    ended.set_result(None)

            task.add_done_callback(on_end)
            await asyncio.wait({ended}, timeout=_CLOSE_GRACE)
            loop.mark_closed()
            return
        self._driving = True
        try:
            await self._drive(loop, park=False, until=host.time() + _CLOSE_GRACE)
            if not task.done():  # a body that keeps swallowing the signal: stop it the hard way
                self._hard_stop = True
                task.cancel()
                await self._drive(loop, park=False, until=host.time() + _CLOSE_HARD_STOP)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: nothing a closed body does is reported
        finally:
            self._driving = False
            loop.mark_closed()

    # ----------------------------------------------------------------- the driver

    def _body_loop(self, host: asyncio.AbstractEventLoop) -> BodyLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = self._state.loop = new_body_loop(host, self._state.facts.run_id)
        elif loop.host is not host:
            if loop.jobs or loop.timers:
                raise RuntimeError("an execution with host work in flight moved to another loop")
            loop.host = host
        return loop

    async def _drive(self, loop: BodyLoop, *, park: bool, until: float | None) -> bool:
        """Run the body loop until the main task ends (False) or the body parks (True).

        With ``park=False`` (close) the body is driven until it ends or ``until`` passes.
        """
        task = self._task
        assert task is not None
        state = self._state
        host = loop.host
        while True:
            if loop.has_ready:
                loop.run_slice()
            if task.done():
                await self._settle(loop)
                return False
            if until is not None and host.time() >= until:
                return False
            if loop.has_ready:
                await asyncio.sleep(0)  # a long burst: let the host loop take a turn
                continue
            if loop.jobs or loop.timers:
                await self._wait(loop, until)
                continue
            if state.frontier:
                state.settle_frontier()  # quiescent: new work may go on, or the run diverged
                continue
            if park and state.blocked:
                return True  # parked: only a resolution can move the body now
            if until is not None:
                await self._wait(loop, until)
                continue
            # Blocked on nothing the engine knows about. Give it deadlock_timeout to move.
            moved = await self._wait(loop, host.time() + state.host.limits.deadlock_timeout)
            if not moved and self._deadlocked(loop, task):
                return False

    async def _wait(self, loop: BodyLoop, until: float | None) -> bool:
        """Wait until the body loop has something to do; False if ``until`` passed first."""
        waiter = loop.waiter()
        if until is None:
            await waiter
            return True
        timeout = until - loop.host.time()
        if timeout > 0 and not waiter.done():
            await asyncio.wait({waiter}, timeout=timeout)
        if waiter.done():
            return True
        loop.wake()  # drop the waiter
        return False

    async def _settle(self, loop: BodyLoop) -> None:
        """The main task ended: stop what branches it left behind, and wait for their commits."""
        state = self._state
        state.finished = True
        for job in list(state.jobs):
            job.stop()
        committing = [job.task for job in state.jobs if job.task is not None]
        if committing:
            await asyncio.wait(committing)

    def _deadlocked(self, loop: BodyLoop, task: asyncio.Task[Outcome]) -> bool:
        """Fail the run NON_DURABLE_AWAIT; True if the body already ignored that once."""
        state = self._state
        if state.deadlock is not None:
            error = errors.error_dict("NON_DURABLE_AWAIT", state.deadlock, name="NonDurableAwait")
            self._given_up = self._outcome(RunStatus.FAILED, error=error)
            state.finished = True  # left behind on its loop: nothing it does is recorded
            return True
        state.deadlock = _stuck_report(loop, state.host.limits.deadlock_timeout)
        task.cancel()  # the body unwinds with CancelledError, mapped to the error in _main
        return False

    async def _result(self, loop: BodyLoop) -> Outcome:
        if self._given_up is not None:
            return self._given_up
        task = self._task
        assert task is not None and task.done()
        if task.cancelled():
            error = errors.error_dict("INTERNAL", "the workflow body was cancelled by the engine")
            return self._outcome(RunStatus.FAILED, error=error)
        exc = task.exception()
        if exc is None:
            return task.result()
        if isinstance(exc, _signals.HostFailure):
            raise exc
        error = errors.error_dict("INTERNAL", f"the executor failed: {exc!r}")
        return self._outcome(RunStatus.FAILED, error=error)

    # ----------------------------------------------------------------- the body's main task

    async def _main(self) -> Outcome:
        state = self._state
        try:
            try:
                output = await state.definition.fn(state.input, Context(state))
                # The body may have swallowed a signal (except BaseException) and returned.
                state.check_live()
                _check_reached(state)
                output = serialization.round_trip(
                    output, what="workflow output", max_bytes=state.host.limits.max_payload_bytes
                )
                await state.flush_metadata()
                return self._outcome(RunStatus.COMPLETED, output=output)
            except BaseException as exc:  # user code fails only its own run
                return await self._ended_by(exc)
        except _signals.HostFailure:
            raise
        except _signals.InternalSignal as sig:
            # A signal while compensating (a second cancel, a close): stop there. What ran is
            # in the journal; a replay skips it.
            return self._signal_outcome(sig, [])

    async def _ended_by(self, exc: BaseException) -> Outcome:
        state = self._state
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if self._hard_stop:
                raise exc
            if task is not None and task.cancelling():
                task.uncancel()  # ours (a deadlock): the compensations below still await
        # Our own state wins over what the body raised: it may have swallowed a signal.
        signal = exc if isinstance(exc, _signals.InternalSignal) else state.signal()
        if isinstance(signal, _signals.HostFailure):
            raise signal
        if signal is not None and not isinstance(signal, _signals.NonDurableAwait):
            return await self._signalled(signal)
        if signal is not None:
            error = errors.error_dict("NON_DURABLE_AWAIT", signal.detail, name="NonDurableAwait")
        elif state.has_unconsumed():
            # Ended by an error before reaching what the journal holds: compensating now
            # would act on a history this code did not produce. Hold the run instead.
            return self._signal_outcome(_unreached(state), [])
        else:
            error = errors.serialize_error(exc)
        if not state.compensable:
            await state.flush_metadata()
            return self._outcome(RunStatus.FAILED, error=error)
        comps = await run_compensations(state)
        return self._outcome(_compensation_status(comps), error=error, compensations=comps)

    async def _signalled(self, sig: _signals.InternalSignal) -> Outcome:
        state = self._state
        comps: list[CompensationRan] = []
        if isinstance(sig, _signals.RunCancelled):
            if state.cancel_request is None or state.cancel_request[1]:
                comps = await run_compensations(state)
        elif isinstance(sig, _signals.CompensateRequested | _signals.WorkflowTimedOut):
            comps = await run_compensations(state)
        return self._signal_outcome(sig, comps)

    def _signal_outcome(
        self, sig: _signals.InternalSignal, comps: list[CompensationRan]
    ) -> Outcome:
        if isinstance(sig, _signals.RunCancelled):
            error = errors.error_dict(self._cancel_code, str(sig), name="RunCancelled")
            return self._outcome(RunStatus.CANCELLED, error=error, compensations=comps)
        if isinstance(sig, _signals.CompensateRequested):
            return self._outcome(_compensation_status(comps), compensations=comps)
        if isinstance(sig, _signals.WorkflowTimedOut):
            error = errors.error_dict("WORKFLOW_TIMEOUT", str(sig), name="WorkflowTimedOut")
            return self._outcome(RunStatus.TIMED_OUT, error=error, compensations=comps)
        if isinstance(sig, _signals.Diverged):
            error = errors.error_dict(
                "NONDETERMINISM",
                "the workflow code no longer follows this run's journal; the run is held "
                "paused until a deploy that replays it is resumed",
                name="Nondeterminism",
                data={"divergence": sig.detail},
            )
            return self._outcome(RunStatus.PAUSED, error=error)
        if isinstance(sig, _signals.NonDurableAwait):
            error = errors.error_dict("NON_DURABLE_AWAIT", sig.detail, name="NonDurableAwait")
            return self._outcome(RunStatus.FAILED, error=error, compensations=comps)
        return self._outcome(RunStatus.WAITING)  # Suspended: closed, or stopped by the host

    def _outcome(
        self,
        status: RunStatus,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        compensations: list[CompensationRan] | None = None,
    ) -> Outcome:
        return Outcome(
            status=status,
            output=output,
            error=error,
            compensations=tuple(compensations or ()),
            divergence=self._divergence(),
            compute_used=self.compute_used,
        )

    def _divergence(self) -> tuple[dict[str, Any], ...]:
        state = self._state
        found = list(state.divergences)
        # consumed_steps only ever holds ids that are in the journal, so equal sizes mean
        # every recorded step was reached: O(1) on the common path.
        if state.held is None and state.has_unconsumed():
            found.append({"kind": "unreached", **state.unconsumed()})
        return tuple(found)

    # ----------------------------------------------------------------- compute budget

    def _arm_budget(self, host: asyncio.AbstractEventLoop) -> asyncio.TimerHandle | None:
        budget = self._state.definition.timeout
        if budget is None:
            return None
        remaining = budget - self.compute_used
        if remaining <= 0:
            self._state.timed_out = True
            return None
        return host.call_later(remaining, self._on_budget_exceeded)

    def _on_budget_exceeded(self) -> None:
        state = self._state
        state.timed_out = True
        budget = state.definition.timeout or 0.0
        state.interrupt(lambda: _signals.WorkflowTimedOut(budget))


def _check_reached(state: RunState) -> None:
    if state.has_unconsumed():
        raise _unreached(state)


def _unreached(state: RunState) -> _signals.Diverged:
    """The body ended before reaching recorded entries: it diverged (SPEC §3)."""
    return state.diverge({"kind": "unreached", **state.unconsumed()})


def _compensation_status(comps: list[CompensationRan]) -> RunStatus:
    if any(c.status == "err" for c in comps):
        return RunStatus.COMPENSATION_FAILED
    return RunStatus.COMPENSATED


# ----------------------------------------------------------------- naming a stuck body

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)
_RUNTIME_DIR = os.path.dirname(__file__)


def _stuck_report(loop: BodyLoop, timeout: float) -> str:
    """Say where each stuck body task waits and on what: file:line, function, awaited object."""
    places: list[str] = []
    for task in asyncio.all_tasks(loop):
        place = _where_stuck(task)
        if place is not None:
            places.append(place)
    where = "; ".join(sorted(places)) or "an awaitable the engine cannot see"
    return (
        f"the workflow body was blocked for {timeout:g}s on something that is not a ctx "
        f"operation and that nothing will complete: {where}. A body may only await ctx "
        "operations, its own tasks, and asyncio timers; do other waiting inside a step"
    )


def _where_stuck(task: asyncio.Task[Any]) -> str | None:
    """The innermost frame of user code in ``task``'s await chain, and what it awaits."""
    coro: Any = task.get_coro()
    user: tuple[str, int, str, Any] | None = None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        awaited = getattr(coro, "cr_await", None)
        if awaited is None:
            awaited = getattr(coro, "gi_yieldfrom", None)
        if frame is not None and not _is_library(frame.f_code.co_filename):
            user = (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, awaited)
        if awaited is None or not (hasattr(awaited, "cr_frame") or hasattr(awaited, "gi_frame")):
            if user is None:
                return None
            break
        coro = awaited
    assert user is not None
    filename, line, function, awaited = user
    if isinstance(awaited, asyncio.Task | asyncio.Future) and _is_ours(awaited):
        return None  # a task of the body, gather or a waitpoint: not the stuck end itself
    return f"{filename}:{line} in {function}() awaits {_short_repr(awaited)}"


def _is_library(filename: str) -> bool:
    return filename.startswith((_ASYNCIO_DIR, _RUNTIME_DIR))


def _is_ours(fut: asyncio.Future[Any]) -> bool:
    # Tasks and gathers are composition: the stuck end is further down, in another task.
    return isinstance(fut, asyncio.Task) or type(fut).__name__ == "_GatheringFuture"


def _short_repr(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 120 else text[:117] + "..."
