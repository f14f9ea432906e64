"""Concurrency groups: who holds a slot, and who waits for one, in memory.

Nothing here is a counter that could leak: the holders of a group are run ids, rebuilt at start
from the runs' stored status (a run that is ``running``, ``waiting`` or ``paused`` holds the
slots of its groups), and a run's slots are given back when it ends. A queued run is an entry,
not a task. When a slot frees, the next run is picked round-robin across the fairness keys
waiting on the group (a busy key cannot starve a quiet one), then by priority (higher first),
then submission order; a run starts only when every one of its groups has room.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.engine.flow.plan import GroupId, Limits, group_name


@dataclass(slots=True, eq=False)
class Entry:
    """A run waiting for slots."""

    run_id: str
    workflow_id: str
    priority: int
    seq: int
    groups: tuple[GroupId, ...]
    fair: str
    live: bool = True
    front: bool = False  # a cancel-in-progress newcomer: next in line whatever its priority

    def rank(self) -> tuple[int, int, int]:
        return (0 if self.front else 1, -self.priority, self.seq)


def fairness_key(groups: Iterable[GroupId]) -> str:
    """The key a run competes under: its first keyed group's key ("" when it has none)."""
    return next((key for _, key in groups if key is not None), "")


@dataclass(slots=True)
class _Group:
    holders: set[str] = field(default_factory=set)
    waiting: dict[str, list[tuple[tuple[int, int, int], int, Entry]]] = field(
        default_factory=dict
    )
    order: deque[str] = field(default_factory=deque)


class Gate:
    """Every concurrency group of the engine."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._groups: dict[GroupId, _Group] = {}
        self._held: dict[str, tuple[GroupId, ...]] = {}
        self._queued: dict[str, Entry] = {}
        self._tick = 0  # tie-breaker for heap entries of equal rank

    def _group(self, group: GroupId) -> _Group:
        found = self._groups.get(group)
        if found is None:
            found = self._groups[group] = _Group()
        return found

    # ------------------------------------------------------------------ questions

    def full(self, groups: Iterable[GroupId]) -> GroupId | None:
        """The first of ``groups`` with no free slot, or None when the run may start."""
        for group in groups:
            limit = self.limits.limit(group)
            if limit is not None and len(self._group(group).holders) >= limit:
                return group
        return None

    def holders(self, group: GroupId) -> frozenset[str]:
        return frozenset(self._group(group).holders)

    def holds(self, run_id: str) -> bool:
        return run_id in self._held

    def queued(self, run_id: str) -> Entry | None:
        return self._queued.get(run_id)

    def waiting_in(self, group: GroupId) -> list[str]:
        """Run ids queued on ``group`` (any order)."""
        return [e.run_id for e in self._queued.values() if group in e.groups]

    # ------------------------------------------------------------------ changes

    def hold(self, run_id: str, groups: tuple[GroupId, ...]) -> None:
        """``run_id`` holds a slot in each of ``groups`` (it started, or was found started)."""
        self._held[run_id] = groups
        for group in groups:
            self._group(group).holders.add(run_id)

    def enqueue(self, entry: Entry) -> None:
        self._queued[entry.run_id] = entry
        self._tick += 1
        for group in entry.groups:
            state = self._group(group)
            heap = state.waiting.get(entry.fair)
            if heap is None:
                heap = state.waiting[entry.fair] = []
                if entry.front:
                    state.order.appendleft(entry.fair)
                else:
                    state.order.append(entry.fair)
            elif entry.front and state.order and state.order[0] != entry.fair:
                state.order.remove(entry.fair)
                state.order.appendleft(entry.fair)
            heapq.heappush(heap, (entry.rank(), self._tick, entry))

    def remove(self, run_id: str) -> Entry | None:
        """Take ``run_id`` out of every queue (it starts elsewhere, ends, or waits for time)."""
        entry = self._queued.pop(run_id, None)
        if entry is not None:
            entry.live = False
        return entry

    def release(self, run_id: str) -> list[Entry]:
        """``run_id`` ended: give its slots back; return the queued runs that start now."""
        groups = self._held.pop(run_id, ())
        for group in groups:
            self._group(group).holders.discard(run_id)
        return self.pump(groups)

    def pump(self, groups: Iterable[GroupId] | None = None) -> list[Entry]:
        """Start queued runs while the given groups (default: all) have room."""
        started: list[Entry] = []
        for group in list(self._groups) if groups is None else groups:
            started.extend(self._pump_one(group))
        return started

    def _pump_one(self, group: GroupId) -> list[Entry]:
        state = self._group(group)
        started: list[Entry] = []
        while state.order and self.full((group,)) is None:
            entry = self._next(state)
            if entry is None:
                break
            self._take(entry)
            started.append(entry)
        return started

    def _next(self, state: _Group) -> Entry | None:
        """The next startable entry, round-robin over fairness keys; None if all are blocked
        (by another of their groups)."""
        tried = 0
        while state.order and tried < len(state.order):
            fair = state.order[0]
            heap = state.waiting[fair]
            while heap and not heap[0][2].live:
                heapq.heappop(heap)
            if not heap:
                state.order.popleft()
                del state.waiting[fair]
                continue
            state.order.rotate(-1)
            tried += 1
            entry = heap[0][2]
            if self.full(entry.groups) is None:
                heapq.heappop(heap)
                return entry
        return None

    def _take(self, entry: Entry) -> None:
        self.remove(entry.run_id)
        self.hold(entry.run_id, entry.groups)

    def admit(self, entry: Entry) -> list[Entry]:
        """Queue ``entry`` behind whoever waits in its groups and start what now can: the
        returned runs (``entry`` among them if it may start at once) hold their slots."""
        self.enqueue(entry)
        return self.pump(entry.groups)

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict[str, dict[str, int]]:
        """Per group with holders or queued runs: ``{holders, queued, limit}``."""
        out: dict[str, dict[str, int]] = {}
        queued: dict[GroupId, int] = {}
        for entry in self._queued.values():
            for group in entry.groups:
                queued[group] = queued.get(group, 0) + 1
        for group, state in self._groups.items():
            if state.holders or queued.get(group):
                out[group_name(group)] = {
                    "holders": len(state.holders),
                    "queued": queued.get(group, 0),
                    "limit": self.limits.limit(group) or 0,
                }
        return out
