"""``ctx``: the object a workflow body talks to."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

from runtime import _signals, durations, errors, patches, serialization
from runtime._state import RunState
from runtime.compensation import run_compensations
from runtime.journal import MetadataOp, MetadataOpName, MetadataTarget, WaitpointRegistered
from runtime.matching import validate_pattern
from runtime.ratelimit import RateLimit
from runtime.retry import RetryPolicy
from runtime.status import WaitpointKind
from runtime.steps import run_step
from runtime.streams import StreamApi
from runtime.waitables import OnTimeout, TokenHandle, Waitable
from runtime.workflow import definition_of

T = TypeVar("T")
R = TypeVar("R")

_TOKEN_NAMESPACE = uuid.UUID("6f1c2a4e-5b0d-4c8e-9a3f-2d7e1b9c0a55")


def auto_token_id(run_id: str, n: int) -> str:
    """The id of the run's ``n``-th token when the body names none (a fork renames copies)."""
    return "tok_" + uuid.uuid5(_TOKEN_NAMESPACE, f"{run_id}:{n}").hex


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: str
    number: int
    attempt: int
    triggered_by: str
    tags: tuple[str, ...]
    started_at: datetime


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    id: str
    version: str


class _Applied:
    """Returned by metadata calls: usable as a statement, or awaited to make it durable now."""

    __slots__ = ("_ex",)

    def __init__(self, ex: RunState) -> None:
        self._ex = ex

    def __await__(self) -> Generator[Any, None, None]:
        return self._ex.flush_metadata().__await__()


class Metadata:
    """``ctx.metadata``: JSON values on the run (or its parent/root), applied exactly once."""

    def __init__(self, ex: RunState, target: MetadataTarget = "self") -> None:
        self._ex = ex
        self._target: MetadataTarget = target

    @property
    def parent(self) -> Metadata:
        return Metadata(self._ex, "parent")

    @property
    def root(self) -> Metadata:
        return Metadata(self._ex, "root")

    def _op(self, op: MetadataOpName, key: str, value: Any) -> _Applied:
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata key must be a non-empty string, got {key!r}")
        ex = self._ex
        index = ex.metadata_index
        ex.metadata_index += 1
        if index >= ex.journal.metadata_ops:  # replays re-emit ops the journal already holds
            value = serialization.round_trip(value, what=f"metadata {key!r}")
            ex.queue_metadata(MetadataOp(index, op, key, value, self._target))
        return _Applied(ex)

    def set(self, key: str, value: Any) -> _Applied:
        return self._op("set", key, value)

    def increment(self, key: str, by: int | float = 1) -> _Applied:
        if not isinstance(by, int | float) or isinstance(by, bool):
            raise ValueError(f"metadata increment of {key!r} needs a number, got {by!r}")
        return self._op("increment", key, by)

    def append(self, key: str, value: Any) -> _Applied:
        return self._op("append", key, value)

    def remove(self, key: str) -> _Applied:
        return self._op("remove", key, None)

    def get(self, key: str, default: Any = None) -> Any:
        """This run's current value (replayed ops included); parent/root are not readable."""
        return self._ex.journal.metadata.get(key, default)


class Group:
    """``async with ctx.group(name) as g``: a compensation scope."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.name = name
        self._ctx = ctx
        self._start: int | None = None

    @property
    def step(self) -> Callable[..., Awaitable[Any]]:
        return self._ctx.step

    async def __aenter__(self) -> Group:
        self._start = len(self._ctx._ex.compensable)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is not None and isinstance(exc, Exception):
            await self.compensate()
        return False

    async def compensate(self) -> None:
        """Run this group's compensations now, newest first; outer ones are untouched."""
        if self._start is None:
            raise RuntimeError(f"group {self.name!r} is not entered")
        await run_compensations(self._ctx._ex, self._start)


class Context:
    """The workflow body's handle on the engine. Everything here is deterministic on replay."""

    def __init__(self, ex: RunState) -> None:
        self._ex = ex
        facts = ex.facts
        self.run = RunInfo(
            id=facts.run_id,
            number=facts.number,
            attempt=facts.attempt,
            triggered_by=facts.triggered_by,
            tags=facts.tags,
            started_at=datetime.fromtimestamp(facts.started_at, UTC),
        )
        self.workflow = WorkflowInfo(id=facts.workflow_id, version=facts.workflow_version)
        self.metadata = Metadata(ex)
        self.stream = StreamApi(ex)

    @property
    def invocation_count(self) -> int:
        return self._ex.facts.invocation_count

    @property
    def is_cancelled(self) -> bool:
        return self._ex.cancel_request is not None

    # -------------------------------------------------------------- steps

    async def step(
        self,
        step_id: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: durations.Duration | None = None,
        compensate: Callable[[Any], Any] | None = None,
        rate_limit: RateLimit | Sequence[RateLimit] | None = None,
        runtime: str | None = None,
    ) -> Any:
        """Run ``fn(*args)`` once and return its recorded JSON result."""
        # No liveness check here: a cancelled run still replays its recorded steps, which
        # rebuilds the compensations it must run. run_step checks before any live attempt.
        return await run_step(
            self._ex,
            step_id,
            fn,
            args,
            retry=retry,
            timeout=timeout,
            compensate=compensate,
            rate_limit=rate_limit,
            runtime=runtime,
        )

    def set_retry(self, policy: RetryPolicy) -> None:
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"set_retry needs a RetryPolicy, got {policy!r}")
        self._ex.default_retry = policy

    # -------------------------------------------------------------- time and randomness

    async def patched(self, patch_id: str) -> bool:
        """True when the run reaches this call on code that has the patch (new runs, and runs
        that had not got this far); False on a replay of a run that went past this point on
        older code: take the old path then. Remove the old path later with
        :meth:`deprecate_patch` once no live run lacks the marker (``wf versions``)."""
        return await patches.patched(self._ex, patch_id)

    def deprecate_patch(self, patch_id: str) -> None:
        """The patch's old path is gone: accept journals with or without its marker."""
        patches.deprecate_patch(self._ex, patch_id)

    def now(self) -> datetime:
        return self._ex.now()

    def random(self) -> float:
        return self._ex.random.random()

    def random_uuid(self) -> str:
        return self._ex.random.uuid()

    async def sleep(self, duration: durations.Duration) -> None:
        seconds = durations.to_seconds(duration)
        await self._sleep(lambda at: at + seconds)

    async def sleep_until(self, when: datetime) -> None:
        if not isinstance(when, datetime):
            raise TypeError(f"sleep_until needs a datetime, got {when!r}")
        if when.tzinfo is None:
            raise ValueError(f"sleep_until needs a timezone-aware datetime, got {when!r}")
        due = when.timestamp()
        await self._sleep(lambda at: due)

    async def _sleep(self, due_from: Callable[[float], float]) -> None:
        ex = self._ex
        wp_id = f"sleep:{ex.next_index('sleep')}"

        def make() -> WaitpointRegistered:
            # The due time is fixed when the sleep is first registered: replays, restarts and
            # pauses never move it.
            at = ex.host.clock.now()
            return WaitpointRegistered(wp_id, WaitpointKind.DATETIME, at, due_at=due_from(at))

        await ex.wait_on(wp_id, make)

    # -------------------------------------------------------------- waiting on the outside

    def wait_for_event(
        self,
        event_type: str,
        *,
        match: dict[str, Any] | None = None,
        timeout: durations.Duration | None = None,
        on_timeout: OnTimeout = "none",
        lookback: durations.Duration | None = None,
        buffer_size: int = 100,
    ) -> Waitable:
        if not isinstance(event_type, str) or not event_type:
            raise ValueError(f"event_type must be a non-empty string, got {event_type!r}")
        return self._waitable(
            WaitpointKind.EVENT,
            f"event:{event_type}",
            {"event_type": event_type},
            match,
            timeout,
            on_timeout,
            lookback,
            buffer_size,
        )

    def wait_for_signal(
        self,
        name: str,
        *,
        match: dict[str, Any] | None = None,
        timeout: durations.Duration | None = None,
        on_timeout: OnTimeout = "none",
        buffer_size: int = 100,
    ) -> Waitable:
        if not isinstance(name, str) or not name:
            raise ValueError(f"signal name must be a non-empty string, got {name!r}")
        return self._waitable(
            WaitpointKind.SIGNAL,
            f"signal:{name}",
            {"signal": name},
            match,
            timeout,
            on_timeout,
            None,
            buffer_size,
        )

    def _waitable(
        self,
        kind: WaitpointKind,
        prefix: str,
        meta: dict[str, Any],
        match: dict[str, Any] | None,
        timeout: durations.Duration | None,
        on_timeout: OnTimeout,
        lookback: durations.Duration | None,
        buffer_size: int,
    ) -> Waitable:
        if on_timeout not in ("none", "raise"):
            raise ValueError(f"on_timeout must be 'none' or 'raise', got {on_timeout!r}")
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        pattern = validate_pattern(match)
        full_meta = {**meta, "buffer_size": buffer_size}
        if pattern is not None:
            full_meta["match"] = serialization.round_trip(pattern, what="match")
        return Waitable(
            self._ex,
            kind,
            prefix,
            full_meta,
            timeout=durations.to_seconds(timeout) if timeout is not None else None,
            on_timeout=on_timeout,
            lookback=durations.to_seconds(lookback) if lookback is not None else None,
        )

    async def wait_for_token(
        self,
        token_id: str | None = None,
        *,
        timeout: durations.Duration | None = None,
        on_timeout: OnTimeout = "none",
    ) -> TokenHandle:
        """Create a token (a MANUAL waitpoint); ``await tok.wait()`` parks until it completes."""
        ex = self._ex
        n = ex.next_index("token")
        if token_id is None:
            token_id = auto_token_id(ex.facts.run_id, n)
        elif not isinstance(token_id, str) or not token_id:
            raise ValueError(f"token_id must be a non-empty string, got {token_id!r}")
        if on_timeout not in ("none", "raise"):
            raise ValueError(f"on_timeout must be 'none' or 'raise', got {on_timeout!r}")
        seconds = durations.to_seconds(timeout) if timeout is not None else None
        at = ex.host.clock.now()
        await ex.register(
            WaitpointRegistered(
                f"token:{token_id}",
                WaitpointKind.MANUAL,
                at,
                timeout_at=at + seconds if seconds is not None else None,
                meta={"token_id": token_id},
            )
        )
        return TokenHandle(ex, token_id, on_timeout)

    async def invoke(
        self,
        wf_or_id: Any,
        input: Any = None,
        *,
        detach: bool = False,
        idempotency_key: str | None = None,
        tags: Sequence[str] = (),
    ) -> Any:
        """Start a child run and wait for its output (or raise ``ChildRunError``)."""
        ex = self._ex
        workflow_id = wf_or_id if isinstance(wf_or_id, str) else definition_of(wf_or_id).id
        prefix = f"invoke:{workflow_id}"
        n = ex.next_index(prefix)
        wp_id = f"{prefix}:{n}"
        # Deterministic child id: re-creating it after a crash finds the same child. A run
        # retried from scratch (attempt 2, 3, ...) invokes new children, not its old ones.
        child_run_id = f"{ex.facts.run_id}-{workflow_id}-{n}"
        if ex.facts.attempt > 1:
            child_run_id += f"@{ex.facts.attempt}"
        child_input = serialization.round_trip(input, what=f"input of child {workflow_id!r}")

        def make() -> WaitpointRegistered:
            return WaitpointRegistered(
                wp_id,
                WaitpointKind.RUN,
                ex.host.clock.now(),
                meta={
                    "workflow_id": workflow_id,
                    "child_run_id": child_run_id,
                    "input": child_input,
                    "detach": detach,
                    "idempotency_key": idempotency_key,
                    "tags": list(tags),
                },
            )

        if detach:
            await ex.register(make())
            return None
        res = await ex.wait_on(wp_id, make)
        if res.error is not None:
            code = str(res.error.get("code") or "CHILD_RUN_FAILED")
            if code == "CONCURRENCY_DEADLOCK":  # the child could never start: not its failure
                raise errors.FatalError(str(res.error.get("message")), code=code,
                                        data=res.error.get("data"))
            raise errors.ChildRunError(
                f"child run {child_run_id} ({workflow_id}) failed: {res.error.get('message')}",
                code=code,
                data=res.error,
            )
        return res.payload

    # -------------------------------------------------------------- composition

    async def parallel(
        self,
        items: Sequence[T],
        fn: Callable[[T, int], Awaitable[R]],
        *,
        concurrency: int | None = None,
        settle: bool = False,
    ) -> list[R]:
        """``fn(item, index)`` for every item, at most ``concurrency`` at once, in input order."""
        if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        gate = asyncio.Semaphore(concurrency) if concurrency else None

        async def one(item: T, index: int) -> R:
            if gate is None:
                return await fn(item, index)
            async with gate:
                return await fn(item, index)

        tasks = [asyncio.ensure_future(one(item, i)) for i, item in enumerate(items)]
        if not settle:
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, _signals.InternalSignal):
                raise result
        failed = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if failed:
            indices = ", ".join(str(i) for i, _ in failed)
            raise ExceptionGroup(
                f"parallel: items {indices} failed",
                [r for _, r in failed if isinstance(r, Exception)],
            )
        return [r for r in results if not isinstance(r, BaseException)]

    def group(self, name: str) -> Group:
        return Group(self, name)

    async def compensate(self) -> None:
        """Run every registered compensation (newest first) and end the run ``compensated``."""
        raise _signals.CompensateRequested()
