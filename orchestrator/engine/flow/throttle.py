"""Throttle windows: at most ``limit`` starts per ``period`` per key (SPEC §2a).

A window holds the key's recent starts and the starts it has promised: a throttled run is given
the next free turn and its start time is reserved at once, so runs throttled on one key start in
submission order, one turn apart. When a reserved run's turn comes it is checked again against
the others (the one before it may have started a little late), and its reservation becomes its
real start time. Two rules apply: the sliding window (no more than ``limit`` starts in any
``period``) and, with ``burst < limit``, a cell-rate spacing (GCRA) that lets ``burst`` starts
through at once and the rest one per ``period / limit``. The actual starts are the runs' stored
``started_at``, so a restart rebuilds the windows (reservations start over with the runs' timers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import storage
from runtime.flow import Throttle


def rule_of(spec: Throttle) -> storage.ThrottleRule:
    """The throttle as storage's admission op applies it (one definition of the rule)."""
    return storage.ThrottleRule(spec.limit, spec.period_seconds, spec.burst or spec.limit)


@dataclass(slots=True)
class _Window:
    starts: list[float] = field(default_factory=list)  # actual starts, sorted
    reserved: dict[str, float] = field(default_factory=dict)  # run id -> promised start


class Windows:
    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def next_start(self, key: str, spec: Throttle, now: float, run_id: str = "") -> float:
        """The earliest time at or after ``now`` when ``run_id`` may start under ``key``: after
        the actual starts and the turns promised to runs ahead of it (all of them for a run
        with no turn yet; those before its own for a run that has one)."""
        window = self._windows.get(key)
        if window is None:
            return now
        window.starts = [t for t in window.starts if t > now - 2 * spec.period_seconds]
        mine = window.reserved.get(run_id)
        ahead = [at for r, at in window.reserved.items()
                 if r != run_id and (mine is None or (at, r) < (mine, run_id))]
        times = sorted([*window.starts, *ahead])
        return rule_of(spec).next_start(times, now)

    def reserve(self, key: str, run_id: str, at: float) -> None:
        """Promise ``run_id`` a start at ``at`` (the next run gets the turn after)."""
        self._windows.setdefault(key, _Window()).reserved[run_id] = at

    def release(self, key: str, run_id: str) -> None:
        """A run that had a reservation will not start (cancelled, expired)."""
        window = self._windows.get(key)
        if window is not None:
            window.reserved.pop(run_id, None)

    def record(self, key: str, at: float, run_id: str = "") -> None:
        """A run under ``key`` started at ``at`` (its reservation, if any, is now a start)."""
        window = self._windows.setdefault(key, _Window())
        window.reserved.pop(run_id, None)
        window.starts.append(at)
        window.starts.sort()
