"""``ctx.step``: attempts, retries as durable waitpoints, timeouts, threads and processes."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from runtime import _signals, durations, errors, serialization
from runtime.journal import StepAttempt, WaitpointRegistered
from runtime.ratelimit import RateLimit
from runtime.retry import DEFAULT_POLICY, RetryPolicy, next_delay
from runtime.status import WaitpointKind

if TYPE_CHECKING:
    from runtime.executor import Execution


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


def _is_module_level(fn: Callable[..., Any]) -> bool:
    qualname = getattr(fn, "__qualname__", "")
    return bool(qualname) and "<" not in qualname and "." not in qualname


async def call_fn(
    ex: Execution,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    timeout: float | None,
    step_id: str,
    runtime: str = "inline",
) -> Any:
    """Call ``fn(*args)``: async inline, sync in a worker thread, or in the process pool.

    The call runs in its own task so that a cancel can stop it; a timed-out async call is
    cancelled, a timed-out sync call keeps its thread but its late result is discarded.
    """
    loop = asyncio.get_running_loop()
    if runtime != "process" and _is_async(fn):
        return await _call_inline(ex, fn(*args), timeout, step_id)
    if runtime == "process":
        runner = ex.host.process_runner
        if runner is None:
            raise errors.FatalError(
                f"step {step_id!r} asked for runtime='process' but the host has no process pool "
                "(set runtime.process_workers > 0)",
                code="PROCESS_RUNTIME_UNAVAILABLE",
            )
        if not _is_module_level(fn):
            raise errors.FatalError(
                f"step {step_id!r}: runtime='process' needs a module-level function, "
                f"got {getattr(fn, '__qualname__', fn)!r}",
                code="INVALID_STEP",
            )
        fut: asyncio.Future[Any] = asyncio.ensure_future(runner.run(fn, args))
    else:
        call = contextvars.copy_context().run
        fut = loop.run_in_executor(ex.host.thread_pool, partial(call, fn, *args))
    ex.inflight.add(fut)
    try:
        if timeout is not None:
            done, _ = await asyncio.wait({fut}, timeout=timeout)
            if not done:
                fut.cancel()
                raise errors.StepTimeoutError(
                    f"step {step_id!r} timed out after {timeout:g}s", data={"timeout": timeout}
                )
        result = await fut
        if inspect.isawaitable(result):  # a sync callable that returned a coroutine
            result = await result
        return result
    except asyncio.CancelledError:
        signal = ex.interrupt_signal()
        if signal is not None:
            raise signal from None
        raise
    finally:
        ex.inflight.discard(fut)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or (
        isinstance(fn, partial) and inspect.iscoroutinefunction(fn.func)
    )


async def _call_inline(
    ex: Execution, coro: Awaitable[Any], timeout: float | None, step_id: str
) -> Any:
    """Await an async step body in the current task (no task per step: this is the hot path).

    The current task is registered as in flight, so a cancel reaches the step's await; it is
    only registered while the step body runs, never while the result is being committed.
    """
    task = asyncio.current_task()
    assert task is not None
    ex.inflight.add(task)
    try:
        if timeout is None:
            return await coro
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except TimeoutError:
            if ex.interrupt_signal() is not None:
                raise
            raise errors.StepTimeoutError(
                f"step {step_id!r} timed out after {timeout:g}s", data={"timeout": timeout}
            ) from None
    except asyncio.CancelledError:
        signal = ex.interrupt_signal()
        if signal is None:
            raise
        task.uncancel()  # the cancel was ours: turn it into the run-level signal
        raise signal from None
    finally:
        ex.inflight.discard(task)


async def run_step(
    ex: Execution,
    step_id: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    retry: RetryPolicy | None,
    timeout: durations.Duration | None,
    compensate: Callable[[Any], Any] | None,
    rate_limit: RateLimit | None,
    runtime: str | None,
) -> Any:
    """Return the step's recorded result, running attempts until one is recorded as final."""
    if not isinstance(step_id, str) or not step_id:
        raise ValueError(f"step_id must be a non-empty string, got {step_id!r}")
    if not callable(fn):
        raise TypeError(f"step {step_id!r}: fn must be callable, got {fn!r}")
    if runtime not in (None, "inline", "process"):
        raise ValueError(
            f"step {step_id!r}: runtime must be 'inline' or 'process', got {runtime!r}"
        )
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
            attempt = 1
        elif rec.status == "ok":
            ex.advance_clock(rec.finished_at)
            if compensate is not None:
                from runtime.executor import Compensable

                ex.compensable.append(Compensable(step_id, rec.output, compensate))
            return rec.output
        elif rec.retry_at is None:
            ex.advance_clock(rec.finished_at)
            if live_error is not None:
                raise live_error
            raise errors.deserialize_error(rec.error or {})
        else:
            # The backoff is a durable DATETIME waitpoint, so a restart resumes it on time.
            wp_id = f"retry:{step_id}:{rec.attempt}"
            await ex.wait_on(wp_id, partial(_backoff_waitpoint, wp_id, rec))
            attempt = rec.attempt + 1
        rec, live_error = await _attempt(
            ex, step_id, position, attempt, fn, args, policy, timeout_s, rate_limit, runtime
        )


def _backoff_waitpoint(wp_id: str, failed: StepAttempt) -> WaitpointRegistered:
    return WaitpointRegistered(
        wp_id=wp_id,
        kind=WaitpointKind.DATETIME,
        registered_at=failed.finished_at,
        due_at=failed.retry_at,
        meta={"step_id": failed.step_id, "attempt": failed.attempt},
    )


async def _attempt(
    ex: Execution,
    step_id: str,
    position: int,
    attempt: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    policy: RetryPolicy,
    timeout: float | None,
    rate_limit: RateLimit | None,
    runtime: str | None,
) -> tuple[StepAttempt, BaseException | None]:
    ex.check_live()
    held = ex.host.gate()
    if held is not None:
        await held
        ex.check_live()
    clock = ex.host.clock
    runtime_name = runtime or "inline"
    token = _CURRENT.set(StepContext(step_id, attempt, ex.facts.run_id))
    ex.busy_begin()
    started = clock.now()
    output: Any = None
    error: dict[str, Any] | None = None
    failure: BaseException | None = None
    retry_at: float | None = None
    try:
        if rate_limit is not None:
            await _acquire(ex, step_id, rate_limit)
        value = await call_fn(ex, fn, args, timeout=timeout, step_id=step_id, runtime=runtime_name)
        output = serialization.round_trip(
            value, what=f"step {step_id!r}", max_bytes=ex.host.limits.max_payload_bytes
        )
    except _signals.InternalSignal:
        raise
    except Exception as exc:
        failure = exc
        error = errors.serialize_error(exc)
    finally:
        _CURRENT.reset(token)
        ex.busy_end()
    finished = clock.now()
    if failure is not None:
        delay = next_delay(policy, attempt, failure)
        retry_at = finished + delay if delay is not None else None
    entry = StepAttempt(
        step_id=step_id,
        position=position,
        attempt=attempt,
        status="err" if failure is not None else "ok",
        output=output,
        error=error,
        started_at=started,
        finished_at=finished,
        runtime=runtime_name,
        retry_at=retry_at,
    )
    await ex.record(entry)
    ex.consumed_steps.add(step_id)
    return entry, failure


async def _acquire(ex: Execution, step_id: str, spec: RateLimit) -> None:
    limiter = ex.host.rate_limiter
    if limiter is None:
        raise errors.FatalError(
            f"step {step_id!r} declares rate_limit but the host provides no rate limiter",
            code="RATE_LIMITER_MISSING",
        )
    await limiter.acquire(
        spec.resolve_key(ex.input),
        spec.limit,
        durations.to_seconds(spec.window),
        spec.units,
        spec.on_limit,
    )
