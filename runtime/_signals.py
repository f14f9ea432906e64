"""Internal signals that unwind a workflow body.

They subclass ``BaseException`` so that a user's ``except Exception`` cannot swallow them; a body
that catches even those (``except BaseException``) is still parked, cancelled or timed out, because
the executor checks its own state before it believes what the body returned.
"""

from __future__ import annotations


class InternalSignal(BaseException):
    """Base of every signal the executor uses to unwind a body."""


class Suspended(InternalSignal):
    """The body waits on an unresolved waitpoint and the host closed the execution (park cold)."""

    def __init__(self, waitpoint_id: str | None = None) -> None:
        super().__init__(f"waitpoint pending: {waitpoint_id}" if waitpoint_id else "suspended")
        self.waitpoint_id = waitpoint_id


class RunCancelled(InternalSignal):
    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "run cancelled")
        self.reason = reason


class CompensateRequested(InternalSignal):
    def __init__(self) -> None:
        super().__init__("compensate requested")


class WorkflowTimedOut(InternalSignal):
    def __init__(self, budget: float) -> None:
        super().__init__(f"workflow exceeded its compute-time budget of {budget:g}s")
        self.budget = budget


class HostFailure(InternalSignal):
    """The host could not make an entry durable: the body must not continue past it."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"host failed to record a journal entry: {cause!r}")
        self.cause = cause


class NonDurableAwait(InternalSignal):
    """The body stayed blocked on something no ctx operation, timer or host work can finish."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Diverged(InternalSignal):
    """A replay left the recorded history (SPEC §3): the body must not run anything new. The
    host holds the run ``paused`` with code ``NONDETERMINISM`` until a fixed deploy resumes it."""

    def __init__(self, detail: dict[str, object]) -> None:
        super().__init__(f"replay diverged from the journal: {detail}")
        self.detail = detail
