"""The seams inside the engine: what an actor needs from whoever hosts it, and how the parts
that produce work tell the parts that consume it.

An actor depends on :class:`RunHost` only, never on the supervisor that implements it (the shape
of httpcore's ``interfaces.py``), so an actor can be built and tested with a small host of its
own, and the supervisor ↔ actor ↔ timers import circle does not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.engine.flow.plan import GroupId, Plan
from orchestrator.engine.messages import Cancel, Message
from orchestrator.engine.tallies import EngineTallies
from runtime.clock import Clock
from runtime.facts import HostServices, RecordFn
from runtime.workflow import Registry

if TYPE_CHECKING:
    import storage
    from runtime.executor import Execution
    from storage.records import RunRecord


Deliver = Callable[[str, "Message | None"], None]
"""``deliver(run_id, message)``: move a run (post to its actor, or start one)."""

TimerStored = Callable[[float], None]
"""``timer_stored(due_at)``: a timer due at ``due_at`` was committed (wake the timer task)."""


class RunTracing(Protocol):
    """Trace export (SPEC §12, the ``otel`` extra; ``engine/otel.py`` implements it): the
    engine makes a step attempt's span current and reports parked and ended runs, nothing
    more."""

    def step_scope(
        self, run: RunRecord, step_id: str, attempt: int
    ) -> AbstractContextManager[Any]: ...

    def run_parked(self, run_id: str) -> None: ...

    def run_ended(self, run_id: str) -> None: ...

    async def close(self) -> None: ...


class FlowPort(Protocol):
    """What the supervisor asks of admission on its actors' behalf."""

    def admit_new(self, run: RunRecord) -> None: ...

    async def deadlock(self, chain: Iterable[str], plan: Plan) -> GroupId | None: ...


class RunHost(Protocol):
    """What a :class:`~orchestrator.engine.actor.RunActor` needs to drive one run."""

    @property
    def storage(self) -> storage.Storage: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def accepting(self) -> bool:
        """False once shutdown began: actors stop at the next step boundary."""
        ...

    def services(self, run: RunRecord, record: RecordFn) -> HostServices:
        """The runtime host services for one run's execution (pools, limiter, limits, gate)."""
        ...

    def deliver(self, run_id: str, message: Message | None = None) -> None:
        """Move another run (a child created, a parent resolved, a child cancelled)."""
        ...

    def timer_stored(self, due_at: float) -> None: ...

    @property
    def tallies(self) -> EngineTallies:
        """In-memory counts for ``/metrics`` (step attempts by workflow and outcome)."""
        ...

    def admit(self, run: RunRecord) -> None:
        """A new run (a child) was committed: admission starts it, or queues or delays it."""
        ...

    async def concurrency_deadlock(self, parent: RunRecord, plan: Plan) -> str | None:
        """The name of a group of ``plan`` that ``parent`` and its ancestors hold to its
        limit (a child in it could never start), or None."""
        ...

    def take_warm(self, run_id: str) -> tuple[Execution, RunRecord] | None:
        """The run's suspended execution (and its record), if it was kept warm."""
        ...

    def park(self, run_id: str, execution: Execution, run: RunRecord) -> None:
        """The run parked: keep its execution warm or close it."""
        ...

    def publish_state(self, run_id: str, status: str, workflow_id: str | None = None) -> None:
        """Tell live watchers and the change feed the run's status changed (after the
        commit)."""
        ...

    def paused(self, run_id: str) -> bool:
        """``pause {run_id}`` is in force for the run (hold it before its next step, park it
        ``paused``)."""
        ...

    def hold(self, run_id: str) -> None:
        """Pause the run in memory (its deliveries are kept for the resume): the actor just
        committed it ``paused`` with its ``paused`` flag (a divergence, SPEC §14)."""
        ...

    def holds_start(self, run: RunRecord) -> bool:
        """The pending ``run`` may not start now (it, or its workflow, is paused)."""
        ...

    def held_back(self, run: RunRecord) -> None:
        """The pending ``run`` was not started because of a pause (admission keeps it)."""
        ...

    def cancel_child(self, child: RunRecord, cancel: Cancel) -> None:
        """Carry out the cancel of a child whose cancel request was just committed."""
        ...

    def run_finished(self, run: RunRecord) -> None:
        """The run's final record, as just committed."""
        ...
