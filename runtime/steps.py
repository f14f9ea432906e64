"""``ctx.step``: attempts, retries as durable waitpoints, timeouts, threads and processes.

The body decides which attempt to run (or returns the recorded result on replay); the attempt
itself runs on the host loop in one hop: the rate limit, the call, the JSON round-trip and the
commit of its ``StepAttempt``, which the journal holds before the body sees the result.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from runtime import _signals, calls, durations, errors, serialization
from runtime._state import PATCH_PREFIX, Compensable, HostJob, RunState
from runtime.journal import StepAttempt, WaitpointRegistered
from runtime.ratelimit import RateLimit, Take
from runtime.retry import DEFAULT_POLICY, RetryPolicy, next_delay
from runtime.status import WaitpointKind


class StepContext:
    """What ``current_step()`` returns inside a step function."""

    __slots__ = ("_log", "attempt", "run_id", "step_id")

    def __init__(self, step_id: str, attempt: int, run_id: str) -> None:
        self.step_id = step_id
        self.attempt = attempt
        self.run_id = run_id
        self._log: Any = None

    @property
    def log(self) -> Any:
        """A structlog logger bound to the run, step and attempt (made on first use)."""
        if self._log is None:
            import structlog

            self._log = structlog.get_logger("wf.step").bind(
                run_id=self.run_id, step_id=self.step_id, attempt=self.attempt
            )
        return self._log


_CURRENT: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "wf_current_step", default=None
)


def current_step() -> StepContext:
    """The step being executed; raises ``LookupError`` outside a step function."""
    step = _CURRENT.get()
    if step is None:
        raise LookupError("current_step() called outside a step function")
    return step


async def run_step(
    ex: RunState,
    step_id: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    retry: RetryPolicy | None,
    timeout: durations.Duration | None,
    compensate: Callable[[Any], Any] | None,
    rate_limit: RateLimit | Sequence[RateLimit] | None,
    runtime: str | None,
) -> Any:
    """Return the step's recorded result, running attempts until one is recorded as final."""
    limits = _rate_limits(step_id, rate_limit)
    if not isinstance(step_id, str) or not step_id:
        raise ValueError(f"step_id must be a non-empty string, got {step_id!r}")
    if not callable(fn):
        raise TypeError(f"step {step_id!r}: fn must be callable, got {fn!r}")
    if runtime not in (None, "inline", "process"):
        raise ValueError(
            f"step {step_id!r}: runtime must be 'inline' or 'process', got {runtime!r}"
        )
    if step_id.startswith(PATCH_PREFIX):
        raise ValueError(f"step id {step_id!r}: the prefix {PATCH_PREFIX!r} is reserved for "
                         "ctx.patched markers")
    if step_id in ex.seen_steps:
        raise errors.FatalError(
            f"step id {step_id!r} was used twice in run {ex.facts.run_id}",
            code="DUPLICATE_STEP_ID",
            data={"step_id": step_id},
        )
    ex.seen_steps.add(step_id)
    position = ex.step_position
    ex.step_position += 1
    timeout_s = durations.to_seconds(timeout) if timeout is not None else None
    policy = retry or ex.default_retry or DEFAULT_POLICY
    rec = ex.journal.steps.get(step_id)
    if rec is not None:
        ex.consumed_steps.add(step_id)
        if rec.position != position:
            ex.divergences.append(
                {
                    "kind": "position",
                    "step_id": step_id,
                    "recorded_position": rec.position,
                    "position": position,
                }
            )
    fn = ex.host.overrides.get(step_id, fn)
    live_error: BaseException | None = None
    while True:
        if rec is None:
            if step_id not in ex.journal.reopened:
                await ex.at_frontier({"step_id": step_id})
            attempt = 1
        elif rec.status == "ok":
            ex.advance_clock(rec.finished_at)
            if compensate is not None:
                ex.compensable.append(Compensable(step_id, rec.output, compensate))
            return rec.output
        elif rec.retry_at is None:
            ex.advance_clock(rec.finished_at)
            if isinstance(live_error, Exception):
                raise live_error
            # Replay raises the recorded error; so does a live attempt that failed with a
            # BaseException (SystemExit, a stray CancelledError): the body sees the same both ways.
            raise errors.deserialize_error(rec.error or {})
        else:
            # The backoff is a durable DATETIME waitpoint, so a restart resumes it on time.
            wp_id = f"retry:{step_id}:{rec.attempt}"
            await ex.wait_on(wp_id, partial(_backoff_waitpoint, wp_id, rec))
            attempt = rec.attempt + 1
        ex.check_live()
        held = ex.host.gate()
        if held is not None:
            await ex.on_host(_hold, held)
            ex.check_live()
        # The attempt and the commit of its record: the step's one hop to the host.
        rec, live_error = await ex.on_host(
            _attempt_on_host, ex, step_id, position, attempt, fn, args, policy, timeout_s,
            limits, runtime or "inline",
        )


def _backoff_waitpoint(wp_id: str, failed: StepAttempt) -> WaitpointRegistered:
    return WaitpointRegistered(
        wp_id=wp_id,
        kind=WaitpointKind.DATETIME,
        registered_at=failed.finished_at,
        due_at=failed.retry_at,
        meta={"step_id": failed.step_id, "attempt": failed.attempt},
    )


async def _hold(job: HostJob, held: Awaitable[None]) -> None:
    await held


async def _attempt_on_host(
    job: HostJob,
    ex: RunState,
    step_id: str,
    position: int,
    attempt: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    policy: RetryPolicy,
    timeout: float | None,
    rate_limits: tuple[RateLimit, ...],
    runtime: str,
) -> tuple[StepAttempt, BaseException | None]:
    """On the host: one attempt and the commit of its record (the step's one hop)."""
    clock = ex.host.clock
    _CURRENT.set(StepContext(step_id, attempt, ex.facts.run_id))  # this task's own context
    started = clock.now()
    output: Any = None
    error: dict[str, Any] | None = None
    failure: BaseException | None = None
    retry_at: float | None = None
    try:
        if rate_limits:
            await _acquire(ex, step_id, rate_limits)
        if ex.host.inject_failure is not None:
            injected = ex.host.inject_failure(step_id, attempt, policy)
            if injected is not None:
                raise injected
        scope = ex.host.step_scope
        if scope is None:
            value = await calls.call(ex.host, fn, args, timeout=timeout, step_id=step_id,
                                     runtime=runtime)
        else:
            with scope(step_id, attempt):  # the attempt's span is current in the step function
                value = await calls.call(ex.host, fn, args, timeout=timeout, step_id=step_id,
                                         runtime=runtime)
        output = serialization.round_trip(
            value, what=f"step {step_id!r}", max_bytes=ex.host.limits.max_payload_bytes
        )
    except asyncio.CancelledError as exc:
        if job.stopped:
            raise  # ours (cancel, close, budget, or the body stopped waiting): no record
        failure = exc  # raised by the step function itself
        error = errors.serialize_error(exc)
    except _signals.InternalSignal:
        raise
    except BaseException as exc:  # SystemExit and friends fail only this step
        failure = exc
        error = errors.serialize_error(exc)
    finished = clock.now()
    if isinstance(failure, Exception):
        delay = next_delay(policy, attempt, failure)
        retry_at = finished + delay if delay is not None else None
    # Positional, in field order: built once per step (keywords cost more here).
    entry = StepAttempt(step_id, position, attempt, "err" if failure is not None else "ok",
                        output, error, started, finished, runtime, retry_at)
    job.hold()  # from here the outcome must become durable, whatever the body does
    await ex.record_on_host(entry)
    return entry, failure


def _rate_limits(
    step_id: str, value: RateLimit | Sequence[RateLimit] | None
) -> tuple[RateLimit, ...]:
    if value is None:
        return ()
    specs = (value,) if isinstance(value, RateLimit) else tuple(value)
    for spec in specs:
        if not isinstance(spec, RateLimit):
            raise TypeError(
                f"step {step_id!r}: rate_limit must be a RateLimit or a list of them, got {spec!r}"
            )
    return specs


async def _acquire(ex: RunState, step_id: str, specs: tuple[RateLimit, ...]) -> None:
    """Take every bucket of ``specs`` or none (a partial take is given back)."""
    limiter = ex.host.rate_limiter
    if limiter is None:
        raise errors.FatalError(
            f"step {step_id!r} declares rate_limit but the host provides no rate limiter",
            code="RATE_LIMITER_MISSING",
        )
    await limiter.acquire_all([
        Take(spec.resolve_key(ex.input), spec.limit, durations.to_seconds(spec.window),
             spec.units, spec.on_limit)
        for spec in specs
    ])
