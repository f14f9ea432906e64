"""The executor: runs one workflow body against its journal.

An :class:`Execution` drives one run. ``advance()`` runs the body until it completes, fails, or
blocks on unresolved waitpoints (``waiting``). Each entry the body produces goes to the host's
``record`` callback and is folded into the journal only once the host says it is durable, so the
body never continues past something that could be lost.

After ``waiting`` the host either keeps the execution (a *warm* run: the coroutine stays suspended
and ``resolve()`` + ``advance()`` continue it without replay) or calls ``close()`` (a *cold* run:
the body is unwound with an internal signal, and a later execution replays it from the top).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runtime import _signals, errors, serialization
from runtime.determinism import DeterministicRandom
from runtime.facts import HostServices, Outcome, RunFacts
from runtime.journal import (
    CompensationRan,
    Entry,
    Journal,
    MetadataOp,
    WaitpointRegistered,
    WaitpointResolved,
)
from runtime.retry import RetryPolicy
from runtime.status import RunStatus
from runtime.workflow import WorkflowDefinition

# Loop turns with no executor activity before a body blocked on waitpoints counts as parked.
# Sibling branches (gather, parallel) hand results up through a few task wake-ups; this is only
# paid when a run parks, never per step.
_IDLE_TURNS = 8


@dataclass(slots=True)
class Compensable:
    step_id: str
    output: Any
    fn: Callable[[Any], Any]


class Execution:
    """One run's body, its journal and its host. Not thread-safe; one asyncio loop."""

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
        self.streams_seen: set[str] = set()
        self.inflight: set[asyncio.Future[Any]] = set()
        self.pending: dict[str, WaitpointRegistered] = {}
        self.compute_used = facts.compute_used
        self._pending_meta: list[MetadataOp] = []
        self._blocked: dict[str, asyncio.Future[WaitpointResolved]] = {}
        self._busy = 0
        self._activity = 0
        self._idle_probe_at: int | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[Outcome] | None = None
        self._closed = False
        self._cancel: tuple[str | None, bool] | None = None
        self._timed_out = False

    # ----------------------------------------------------------------- host-facing API

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    @property
    def is_cancelled(self) -> bool:
        return self._cancel is not None

    async def advance(self) -> Outcome:
        """Run the body until it ends or blocks on waitpoints; return where it stands."""
        if self._closed:
            raise RuntimeError("advance() on a closed execution")
        loop = asyncio.get_running_loop()
        self._idle = idle = asyncio.Event()
        started = loop.time()
        budget = self._arm_budget(loop)
        if self._task is None:
            self._task = loop.create_task(self._main(), name=f"body:{self.facts.run_id}")
        else:
            self._check_idle()
        try:
            while True:
                idle_wait = loop.create_task(idle.wait(), name=f"idle:{self.facts.run_id}")
                try:
                    await asyncio.wait(
                        {self._task, idle_wait}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    idle_wait.cancel()
                if self._task.done() or self._parked():
                    break
                # A resolution landed between the idle probe and here (the host applies
                # deliveries at once while we advance): the body is moving again, so saying
                # WAITING now would park a run nobody drives. Wait for the next idle point.
                self._idle = idle = asyncio.Event()
                self._check_idle()
        finally:
            self._idle = None  # a parked execution holds no event (it may stay warm for long)
            if budget is not None:
                budget.cancel()
            self.compute_used += loop.time() - started
        if self._task.done():
            return self._task.result()
        return Outcome(
            status=RunStatus.WAITING,
            waiting_on=tuple(self.pending.values()),
            divergence=self._divergence(),
            compute_used=self.compute_used,
        )

    def resolve(self, resolution: WaitpointResolved) -> None:
        """Deliver a resolution the host has already made durable."""
        self.journal.apply(resolution)
        self.pending.pop(resolution.wp_id, None)
        fut = self._blocked.get(resolution.wp_id)
        if fut is not None and not fut.done():
            fut.set_result(resolution)
            self._activity += 1  # an idle probe in flight must start over

    def cancel(self, reason: str | None = None, *, compensate: bool = True) -> None:
        """Cancel the run: the in-flight step is cancelled and the body unwinds at its next
        await. Call ``advance()`` afterwards to run compensations and get the outcome."""
        if self._cancel is None:
            self._cancel = (reason, compensate)
        self._interrupt(lambda: _signals.RunCancelled(reason))

    async def close(self) -> None:
        """Unwind a parked body (park cold). Nothing it does afterwards is recorded."""
        self._closed = True
        task = self._task
        if task is None or task.done():
            return
        self._interrupt(_signals.Suspended)
        done, _ = await asyncio.wait({task}, timeout=5.0)
        if not done:  # a body that keeps swallowing the signal: stop it the hard way
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    # ----------------------------------------------------------------- for ctx operations

    def check_live(self) -> None:
        """Raise the right internal signal if the body must not start anything new."""
        if self._closed:
            raise _signals.Suspended()
        if self._cancel is not None:
            raise _signals.RunCancelled(self._cancel[0])
        if self._timed_out:
            raise _signals.WorkflowTimedOut(self.definition.timeout or 0.0)

    def next_index(self, key: str) -> int:
        n = self.counters.get(key, 0)
        self.counters[key] = n + 1
        return n

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock_at, UTC)

    def advance_clock(self, at: float) -> None:
        if at > self.clock_at:
            self.clock_at = at

    def busy_begin(self) -> None:
        self._busy += 1
        self._activity += 1

    def busy_end(self) -> None:
        self._busy -= 1
        self._activity += 1
        self._check_idle()

    def interrupt_signal(self) -> BaseException | None:
        """The signal that explains why an in-flight operation was cancelled, if any."""
        if self._closed:
            return _signals.Suspended()
        if self._cancel is not None:
            return _signals.RunCancelled(self._cancel[0])
        if self._timed_out:
            return _signals.WorkflowTimedOut(self.definition.timeout or 0.0)
        return None

    async def record(self, entry: Entry) -> None:
        """Make ``entry`` durable through the host, then fold it into the journal."""
        limit = self.host.limits.max_journal_entries
        if limit is not None and self.journal.size >= limit:
            raise errors.FatalError(
                f"run {self.facts.run_id} reached limits.max_journal_entries={limit}",
                code="JOURNAL_LIMIT",
                data={"limit": limit},
            )
        if self._pending_meta:
            await self._flush_metadata()
        await self._record_now(entry)

    async def _record_now(self, entry: Entry) -> None:
        self.busy_begin()
        try:
            resolutions = await self.host.record(entry)
        except _signals.InternalSignal:
            raise
        except BaseException as exc:
            raise _signals.HostFailure(exc) from exc
        finally:
            self.busy_end()
        self.journal.apply(entry)
        for resolution in resolutions:
            self.resolve(resolution)

    def queue_metadata(self, op: MetadataOp) -> None:
        self._pending_meta.append(op)

    async def _flush_metadata(self) -> None:
        ops, self._pending_meta = self._pending_meta, []
        for op in ops:
            await self._record_now(op)

    async def flush_metadata(self) -> None:
        if self._pending_meta:
            await self._flush_metadata()

    async def wait_on(
        self, wp_id: str, make: Callable[[], WaitpointRegistered]
    ) -> WaitpointResolved:
        """Register waitpoint ``wp_id`` (once, durably) and wait for its resolution."""
        resolution = self.journal.resolutions.get(wp_id)
        if resolution is None:
            self.check_live()
            if wp_id not in self.journal.registrations:
                await self.record(make())
            resolution = self.journal.resolutions.get(wp_id)
        if resolution is None:
            resolution = await self._block(wp_id)
        self.advance_clock(resolution.resolved_at)
        return resolution

    async def register(self, reg: WaitpointRegistered) -> WaitpointRegistered:
        """Record a waitpoint without waiting on it (tokens, detached children)."""
        existing = self.journal.registrations.get(reg.wp_id)
        if existing is not None:
            return existing
        self.check_live()
        await self.record(reg)
        return self.journal.registrations[reg.wp_id]

    async def _block(self, wp_id: str) -> WaitpointResolved:
        await self.flush_metadata()  # what the body set before parking is visible while parked
        fut: asyncio.Future[WaitpointResolved] = asyncio.get_running_loop().create_future()
        self._blocked[wp_id] = fut
        self.pending[wp_id] = self.journal.registrations[wp_id]
        self._activity += 1
        self._check_idle()
        try:
            return await fut
        finally:
            self._blocked.pop(wp_id, None)
            self.pending.pop(wp_id, None)
            self._activity += 1

    # ----------------------------------------------------------------- compensation

    async def run_compensations(self, from_index: int = 0) -> list[CompensationRan]:
        """Run registered compensations from ``from_index`` on, newest first, once each."""
        batch = self.compensable[from_index:]
        del self.compensable[from_index:]
        reports: list[CompensationRan] = []
        for item in reversed(batch):
            done = self.journal.compensations.get(item.step_id)
            if done is None:
                done = await self._run_one_compensation(item)
            reports.append(done)
        return reports

    async def _run_one_compensation(self, item: Compensable) -> CompensationRan:
        from runtime.steps import call_fn  # steps imports this module

        error: dict[str, Any] | None = None
        try:
            await call_fn(self, item.fn, (item.output,), timeout=None, step_id=item.step_id)
        except _signals.InternalSignal:
            raise
        except Exception as exc:
            error = errors.serialize_error(exc)
        entry = CompensationRan(
            step_id=item.step_id,
            status="err" if error else "ok",
            error=error,
            finished_at=self.host.clock.now(),
        )
        await self._record_now(entry)
        return entry

    # ----------------------------------------------------------------- internals

    async def _main(self) -> Outcome:
        from runtime.context import Context  # context imports this module

        try:
            output = await self.definition.fn(self.input, Context(self))
            # The body may have swallowed a signal (except BaseException) and returned anyway.
            self.check_live()
            output = serialization.round_trip(
                output, what="workflow output", max_bytes=self.host.limits.max_payload_bytes
            )
            await self.flush_metadata()
            return self._outcome(RunStatus.COMPLETED, output=output)
        except _signals.Suspended:
            return self._outcome(RunStatus.WAITING)
        except _signals.HostFailure:
            raise
        except _signals.RunCancelled as sig:
            compensate = self._cancel[1] if self._cancel else True
            comps = await self.run_compensations() if compensate else []
            error = errors.error_dict("CANCELLED", str(sig), name="RunCancelled")
            return self._outcome(RunStatus.CANCELLED, error=error, compensations=comps)
        except _signals.CompensateRequested:
            comps = await self.run_compensations()
            return self._outcome(_compensation_status(comps), compensations=comps)
        except _signals.WorkflowTimedOut as sig:
            comps = await self.run_compensations()
            error = errors.error_dict("WORKFLOW_TIMEOUT", str(sig), name="WorkflowTimedOut")
            return self._outcome(RunStatus.TIMED_OUT, error=error, compensations=comps)
        except Exception as exc:
            error = errors.serialize_error(exc)
            if not self.compensable:
                await self.flush_metadata()
                return self._outcome(RunStatus.FAILED, error=error)
            comps = await self.run_compensations()
            return self._outcome(_compensation_status(comps), error=error, compensations=comps)

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
        found = list(self.divergences)
        # consumed_steps only ever holds ids that are in the journal, so equal sizes mean
        # every recorded step was reached: O(1) on the common path.
        if len(self.consumed_steps) != len(self.journal.steps):
            unreached = sorted(set(self.journal.steps) - self.consumed_steps)
            found.append({"kind": "unreached", "step_ids": unreached})
        return tuple(found)

    def _interrupt(self, make: Callable[[], BaseException]) -> None:
        for fut in list(self._blocked.values()):
            if not fut.done():
                fut.set_exception(make())
        for task in list(self.inflight):
            task.cancel()

    def _arm_budget(self, loop: asyncio.AbstractEventLoop) -> asyncio.TimerHandle | None:
        budget = self.definition.timeout
        if budget is None:
            return None
        remaining = budget - self.compute_used
        if remaining <= 0:
            self._timed_out = True
            return None
        return loop.call_later(remaining, self._on_budget_exceeded)

    def _on_budget_exceeded(self) -> None:
        self._timed_out = True
        budget = self.definition.timeout or 0.0
        self._interrupt(lambda: _signals.WorkflowTimedOut(budget))

    def _parked(self) -> bool:
        """The body is blocked on waitpoints none of which has been resolved yet."""
        return (
            self._busy == 0
            and bool(self._blocked)
            and not any(fut.done() for fut in self._blocked.values())
        )

    def _check_idle(self) -> None:
        if self._busy == 0 and self._blocked and self._idle_probe_at is None:
            self._idle_probe_at = self._activity
            asyncio.get_running_loop().call_soon(self._idle_probe, _IDLE_TURNS)

    def _idle_probe(self, turns: int) -> None:
        if self._busy or not self._blocked or self._activity != self._idle_probe_at:
            self._idle_probe_at = None
            self._check_idle()
            return
        if turns:
            asyncio.get_running_loop().call_soon(self._idle_probe, turns - 1)
            return
        self._idle_probe_at = None
        if self._idle is not None:
            self._idle.set()


def _compensation_status(comps: list[CompensationRan]) -> RunStatus:
    if any(c.status == "err" for c in comps):
        return RunStatus.COMPENSATION_FAILED
    return RunStatus.COMPENSATED

