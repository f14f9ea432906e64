"""Calling a user's step or compensation function on the host loop.

An async function is awaited in the host task that runs the attempt; a sync one runs in the
host's thread pool; ``runtime="process"`` hands a module-level function to the process pool.
Cancelling the host task stops an async call; a sync call keeps its thread, and its late result
is discarded.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from runtime import errors
from runtime.facts import HostServices


def is_async(fn: Callable[..., Any]) -> bool:
    code = getattr(fn, "__code__", None)  # a function or bound method: read its flag directly
    if code is not None:
        return bool(code.co_flags & inspect.CO_COROUTINE)
    return inspect.iscoroutinefunction(fn) or (
        isinstance(fn, partial) and inspect.iscoroutinefunction(fn.func)
    )


def _is_module_level(fn: Callable[..., Any]) -> bool:
    qualname = getattr(fn, "__qualname__", "")
    return bool(qualname) and "<" not in qualname and "." not in qualname


def _timed_out(step_id: str, timeout: float) -> errors.StepTimeoutError:
    return errors.StepTimeoutError(
        f"step {step_id!r} timed out after {timeout:g}s", data={"timeout": timeout}
    )


async def call(
    host: HostServices,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    timeout: float | None,
    step_id: str,
    runtime: str = "inline",
) -> Any:
    """Call ``fn(*args)`` (on the host loop) and return what it returned."""
    if runtime != "process" and is_async(fn):
        if timeout is None:
            return await fn(*args)
        try:
            async with asyncio.timeout(timeout):
                return await fn(*args)
        except TimeoutError:
            raise _timed_out(step_id, timeout) from None
    if runtime == "process":
        runner = host.process_runner
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
        call_in_context = contextvars.copy_context().run  # current_step() in the thread
        fut = asyncio.get_running_loop().run_in_executor(
            host.thread_pool, partial(call_in_context, fn, *args)
        )
    try:
        if timeout is not None:
            done, _ = await asyncio.wait({fut}, timeout=timeout)
            if not done:
                raise _timed_out(step_id, timeout)
        result = await fut
    finally:
        if not fut.done():
            fut.cancel()
    if inspect.isawaitable(result):  # a sync callable that returned a coroutine
        result = await result
    return result
