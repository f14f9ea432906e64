"""Step rate limits: the ``RateLimit`` spec, the limiter interface, and an in-memory bucket.

The daemon shares one limiter among all runs; the test harness gets its own.
"""

from __future__ import annotations

from collections.abc import Callable
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


class RateLimiter(Protocol):
    async def acquire(
        self, key: str, limit: int, window: float, units: int, on_limit: OnLimit
    ) -> None:
        """Take ``units`` from bucket ``key``; wait (``queue``) or raise ``RateLimitExceeded``."""
        ...


class TokenBucketLimiter:
    """Token buckets in memory, refilled continuously at ``limit / window`` units a second."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at monotonic)

    def _take(self, key: str, limit: int, window: float, units: int) -> float:
        """Take the units and return 0, or return the seconds until they would be there."""
        now = self._clock.monotonic()
        tokens, at = self._buckets.get(key, (float(limit), now))
        rate = limit / window
        tokens = min(float(limit), tokens + (now - at) * rate)
        if tokens >= units:
            self._buckets[key] = (tokens - units, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (units - tokens) / rate

    async def acquire(
        self, key: str, limit: int, window: float, units: int, on_limit: OnLimit
    ) -> None:
        while True:
            wait = self._take(key, limit, window, units)
            if wait == 0.0:
                return
            if on_limit == "fail":
                raise errors.RateLimitExceeded(
                    f"rate limit {key!r} ({limit} per {window:g}s) exceeded",
                    retry_after=wait,
                    data={"key": key, "limit": limit, "window": window},
                )
            await self._clock.sleep(wait)
