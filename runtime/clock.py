"""Time for the runtime: the only module that reads the wall or monotonic clock."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """A clock that never goes back, for measuring durations."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (used by rate-limit queueing)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that only moves when told to; ``sleep`` jumps instead of waiting."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds
            self._mono += seconds

    def set(self, wall: float) -> None:
        """Jump the wall clock to ``wall`` (forward or back); monotonic time only moves forward."""
        self._mono += max(0.0, wall - self._now)
        self._now = wall

    def skip_to(self, wall: float) -> None:
        """Jump forward to ``wall`` (time skipping); never moves back."""
        self.advance(wall - self._now)

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)
