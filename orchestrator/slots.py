"""The ``max_active_runs`` slots, handed out by rank instead of first come, first served.

A run that already started and is resuming (a timer fired, an event arrived) goes before a run
that has not started yet: the first has a promise of time to keep (a sleep's due time, an event's
delivery), the second only waits for its turn. Among runs that have not started, higher
``priority`` goes first, then the older submission (SPEC §2: pending "by priority, then age").
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

RESUME = 0
START = 1


def rank(*, resuming: bool, priority: int = 0) -> tuple[int, int]:
    """The sort key of a slot request: lower goes first."""
    return (RESUME, 0) if resuming else (START, -priority)


class Slots:
    """A counting semaphore whose waiters are served by rank, then in arrival order."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: list[tuple[tuple[int, int], int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    @property
    def free(self) -> int:
        return self._free

    @property
    def waiting(self) -> int:
        return sum(1 for *_, fut in self._waiters if not fut.done())

    async def acquire(self, key: tuple[int, int]) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (key, next(self._arrival), fut))
        try:
            await fut
        except asyncio.CancelledError:
            # Handed a slot just before the cancel landed: pass it on instead of losing it.
            if fut.done() and not fut.cancelled():
                self.release()
            raise

    def release(self) -> None:
        # A cancelled waiter stays in the heap until it surfaces here: cheaper than removing it.
        while self._waiters:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1
