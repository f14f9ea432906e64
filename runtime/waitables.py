"""Waitables returned by ``ctx.wait_for_event`` / ``ctx.wait_for_signal``, and token handles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from functools import partial
from typing import Any, Literal

from runtime import errors
from runtime._state import RunState
from runtime.journal import WaitpointRegistered, WaitpointResolved
from runtime.status import ResolutionSource, WaitpointKind

OnTimeout = Literal["none", "raise"]


def _registration(
    wp_id: str,
    kind: WaitpointKind,
    meta: dict[str, Any],
    ex: RunState,
    timeout: float | None,
    lookback: float | None,
    since: float | None = None,
) -> WaitpointRegistered:
    at = ex.host.clock.now()
    if since is not None:
        meta = {**meta, "lookback_from": since}
    elif lookback is not None:
        meta = {**meta, "lookback_from": at - lookback}
    return WaitpointRegistered(
        wp_id=wp_id,
        kind=kind,
        registered_at=at,
        timeout_at=at + timeout if timeout is not None else None,
        meta=meta,
    )


class Waitable:
    """``await`` it for the first matching payload; ``async for`` over it for every one."""

    def __init__(
        self,
        ex: RunState,
        kind: WaitpointKind,
        prefix: str,
        meta: dict[str, Any],
        *,
        timeout: float | None,
        on_timeout: OnTimeout,
        lookback: float | None,
    ) -> None:
        self._ex = ex
        self._kind = kind
        self._prefix = prefix
        self._meta = meta
        self._timeout = timeout
        self._on_timeout = on_timeout
        self._lookback = lookback
        self.wp_id = f"{prefix}:{ex.next_index(prefix)}"

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait_once().__await__()

    async def _wait_once(self) -> Any:
        make = partial(
            _registration,
            self.wp_id,
            self._kind,
            self._meta,
            self._ex,
            self._timeout,
            self._lookback,
        )
        return self._payload(await self._ex.wait_on(self.wp_id, make))

    def _payload(self, res: WaitpointResolved) -> Any:
        if res.source == ResolutionSource.TIMEOUT:
            if self._on_timeout == "raise":
                raise errors.StepTimeoutError(
                    f"waitpoint {res.wp_id} timed out", data={"waitpoint_id": res.wp_id}
                )
            return None
        return res.payload

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        # Each step of the iteration is its own waitpoint. Steps after the first look back to
        # the iterator's start, so matching events that arrived while the body was busy are
        # taken from storage in order (the host never hands one event to a run twice).
        iter_prefix = f"{self._prefix}:iter"
        seq = 0
        since: float | None = None
        while True:
            wp_id = f"{iter_prefix}:{self._ex.next_index(iter_prefix)}"
            meta = {**self._meta, "iterator": self.wp_id, "seq": seq}
            make = partial(
                _registration,
                wp_id,
                self._kind,
                meta,
                self._ex,
                self._timeout,
                self._lookback,
                since,
            )
            res = await self._ex.wait_on(wp_id, make)
            if since is None:
                first = self._ex.journal.registrations[wp_id]
                since = first.meta.get("lookback_from", first.registered_at)
            if res.source == ResolutionSource.TIMEOUT:
                if self._on_timeout == "raise":
                    raise errors.StepTimeoutError(
                        f"waitpoint {wp_id} timed out", data={"waitpoint_id": wp_id}
                    )
                return
            seq += 1
            yield res.payload


class TokenHandle:
    """A MANUAL waitpoint: someone outside completes ``id`` with a payload."""

    def __init__(self, ex: RunState, token_id: str, on_timeout: OnTimeout) -> None:
        self._ex = ex
        self.id = token_id
        self.wp_id = f"token:{token_id}"
        self._on_timeout = on_timeout

    async def wait(self) -> Any:
        reg = self._ex.journal.registrations[self.wp_id]
        res = await self._ex.wait_on(self.wp_id, lambda: reg)
        if res.source == ResolutionSource.TIMEOUT:
            if self._on_timeout == "raise":
                raise errors.StepTimeoutError(
                    f"token {self.id} timed out", data={"token_id": self.id}
                )
            return None
        return res.payload

    def __repr__(self) -> str:
        return f"TokenHandle(id={self.id!r})"
