"""Step rate limits: the ``RateLimit`` spec, the limiter interface, and an in-memory bucket.

The daemon shares one limiter among all runs; the test harness gets its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from runtime import durations, errors
from runtime.clock import Clock

OnLimit = Literal["queue", "fail"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket of ``limit`` units refilled over ``window``, shared by every run."""

    key: str | Callable[[Any], str]
    limit: int
    window: durations.Duration
    units: int = 1
    on_limit: OnLimit = "queue"

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(f"RateLimit.limit must be an int >= 1, got {self.limit!r}")
        if not isinstance(self.units, int) or self.units < 1:
            raise ValueError(f"RateLimit.units must be an int >= 1, got {self.units!r}")
        if self.units > self.limit:
            raise ValueError(
                f"RateLimit.units={self.units} exceeds limit={self.limit}: "
                "such a step could never run"
            )
        if self.on_limit not in ("queue", "fail"):
            raise ValueError(f"RateLimit.on_limit must be 'queue' or 'fail', got {self.on_limit!r}")
        if durations.to_seconds(self.window) <= 0:
            raise ValueError(f"RateLimit.window must be positive, got {self.window!r}")

    def resolve_key(self, run_input: Any) -> str:
        return self.key(run_input) if callable(self.key) else self.key


@dataclass(frozen=True, slots=True)
class Take:
    """``units`` from bucket ``key`` (``limit`` units refilled over ``window`` seconds)."""

    key: str
    limit: int
    window: float
    units: int = 1
    on_limit: OnLimit = "queue"


class RateLimiter(Protocol):
    async def acquire_all(self, takes: Sequence[Take]) -> None:
        """Take every one of ``takes`` or none: when one bucket is short, nothing is taken and
        the caller waits until all have room (``queue``), or ``RateLimitExceeded`` is raised
        when a short bucket says ``fail``."""
        ...


class Buckets:
    """Token buckets by key: ``(tokens, at)`` refilled continuously at ``limit / window`` a
    second by the wall clock; shared by the in-memory limiter and the daemon's stored one."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[float, float]] = {}

    def _level(self, take: Take, now: float) -> float:
        tokens, at = self.state.get(take.key, (float(take.limit), now))
        rate = take.limit / take.window
        return min(float(take.limit), tokens + max(0.0, now - at) * rate)

    def try_take(self, takes: Sequence[Take], now: float) -> tuple[float, list[Take]]:
        """Take all and return ``(0, [])``; or take nothing and return the seconds until
        every bucket would have room, with the takes that are short now."""
        levels = [self._level(take, now) for take in takes]
        wait, short = 0.0, []
        for take, level in zip(takes, levels, strict=True):
            if level < take.units:
                short.append(take)
                wait = max(wait, (take.units - level) / (take.limit / take.window))
        if short:
            return wait, short
        for take, level in zip(takes, levels, strict=True):
            self.state[take.key] = (level - take.units, now)
        return 0.0, []

    def load(self, key: str, tokens: float, at: float) -> None:
        """A bucket's stored state (read once, before its first take)."""
        self.state.setdefault(key, (tokens, at))


async def acquire_all(
    buckets: Buckets, takes: Sequence[Take], clock: Clock,
    after_take: Callable[[Sequence[Take]], Awaitable[None]] | None = None,
) -> None:
    """Take all of ``takes`` from ``buckets``, waiting (``queue``) or raising (``fail``)."""
    while True:
        wait, short = buckets.try_take(takes, clock.now())
        if not short:
            if after_take is not None:
                await after_take(takes)
            return
        failing = [t for t in short if t.on_limit == "fail"]
        if failing:
            raise exceeded(failing[0], wait)
        await clock.sleep(wait)


def exceeded(take: Take, wait: float) -> errors.RateLimitExceeded:
    return errors.RateLimitExceeded(
        f"rate limit {take.key!r} ({take.limit} per {take.window:g}s) exceeded",
        retry_after=wait,
        data={"key": take.key, "limit": take.limit, "window": take.window},
    )


class TokenBucketLimiter:
    """Token buckets in memory (``runtime.testing``; the daemon persists its buckets)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._buckets = Buckets()

    async def acquire_all(self, takes: Sequence[Take]) -> None:
        await acquire_all(self._buckets, takes, self._clock)
