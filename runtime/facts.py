"""What the host tells the executor about a run, and what the executor reports back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.clock import Clock, SystemClock
from runtime.journal import CompensationRan, Entry, StreamChunk, WaitpointRegistered
from runtime.journal import WaitpointResolved as WaitpointResolved
from runtime.ratelimit import RateLimiter
from runtime.retry import RetryPolicy
from runtime.status import RunStatus


@dataclass(frozen=True, slots=True)
class RunFacts:
    """Read-only facts of a run; ``started_at`` is the wall-clock start (epoch seconds)."""

    run_id: str
    workflow_id: str
    workflow_version: str
    started_at: float
    number: int = 1
    attempt: int = 1
    triggered_by: str = "api"
    tags: tuple[str, ...] = ()
    invocation_count: int = 1
    parent_run_id: str | None = None
    root_run_id: str | None = None
    compute_used: float = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """``deadlock_timeout``: seconds a body may stay blocked on something that is neither a ctx
    waitpoint, a timer nor host work before the run fails ``NON_DURABLE_AWAIT``."""

    max_payload_bytes: int | None = 2_097_152
    max_journal_entries: int | None = 100_000
    deadlock_timeout: float = 2.0


class ProcessRunner(Protocol):
    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Run module-level ``fn(*args)`` in another process and return its result."""
        ...


RecordFn = Callable[[Entry], Awaitable[Sequence[WaitpointResolved]]]


def _no_gate() -> Awaitable[None] | None:
    return None


@dataclass(slots=True)
class HostServices:
    """What the host (the daemon's actor, or ``runtime.testing``) provides to an execution.

    ``record`` returns only once the entry is durable; it may return resolutions the commit
    produced at once (a signal already in the inbox, an event inside the lookback window).
    ``gate`` is called before each new side effect; it may raise an internal signal (stop
    here) or return an awaitable to hold the body there (a paused run). It is a plain call on
    the hot path: most of the time it returns None.
    ``overrides`` replaces step functions by step id (the test harness's stand-ins);
    ``inject_failure`` may fail an attempt before its function is called (``explore``).
    ``step_scope(step_id, attempt)`` is entered around each live attempt's call, in the task
    (and so the thread) that runs the step function: the daemon makes the attempt's trace span
    current there, so the user's own instrumentation nests under it.
    """

    record: RecordFn
    clock: Clock = field(default_factory=SystemClock)
    rate_limiter: RateLimiter | None = None
    process_runner: ProcessRunner | None = None
    thread_pool: Executor | None = None
    publish: Callable[[StreamChunk], None] | None = None
    gate: Callable[[], Awaitable[None] | None] = _no_gate
    limits: Limits = field(default_factory=Limits)
    overrides: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    inject_failure: Callable[[str, int, RetryPolicy], BaseException | None] | None = None
    """``(step_id, attempt, policy)`` → an error the attempt fails with instead of calling the
    step function (``testing.explore``'s injected failures), or None to call it."""
    step_scope: Callable[[str, int], AbstractContextManager[Any]] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where an ``advance()`` left the run.

    ``waiting_on`` lists the unresolved waitpoints the body is blocked on (status ``waiting``).
    ``divergence`` describes recorded entries a replay did not reach, or reached out of place.
    """

    status: RunStatus
    output: Any = None
    error: dict[str, Any] | None = None
    waiting_on: tuple[WaitpointRegistered, ...] = ()
    compensations: tuple[CompensationRan, ...] = ()
    divergence: tuple[dict[str, Any], ...] = ()
    compute_used: float = 0.0
