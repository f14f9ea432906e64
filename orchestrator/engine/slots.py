"""The ``max_active_runs`` slots and the queue of runs waiting for one.

A run waiting for a slot is an entry in a heap, not a task: a burst of 100k submissions holds
100k small tuples, not 100k suspended actors (that cost memory the process kept after the
burst). Runs are taken by rank: a run that already started and is resuming (a timer fired, an
event arrived) goes before a run that has not started yet, since the first has a promise of time
to keep (a sleep's due time, an event's delivery) and the second only waits for its turn. Among
runs that have not started, higher ``priority`` goes first, then the older submission (SPEC §2:
pending "by priority, then age").
"""

from __future__ import annotations

import heapq
import itertools

RESUME = 0
START = 1

Key = tuple[int, int]


def rank(*, resuming: bool, priority: int = 0) -> Key:
    """The sort key of a slot request: lower goes first."""
    return (RESUME, 0) if resuming else (START, -priority)


class SlotQueue:
    """``size`` slots; a caller that finds none free queues its run id by rank."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: list[tuple[Key, int, str]] = []
        self._arrival = itertools.count()

    @property
    def free(self) -> int:
        return self._free

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def take(self) -> bool:
        """Take a slot if one is free and nobody is queued before us."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return True
        return False

    def queue(self, key: Key, run_id: str) -> None:
        heapq.heappush(self._waiting, (key, next(self._arrival), run_id))

    def hand_over(self) -> str | None:
        """A slot was released: return the run that gets it, or None (the slot is free)."""
        if self._waiting:
            return heapq.heappop(self._waiting)[2]
        self._free += 1
        return None

    def clear(self) -> None:
        self._waiting.clear()
