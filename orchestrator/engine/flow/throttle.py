"""Throttle windows: at most ``limit`` starts per ``period`` per key (SPEC §2a).

A sliding window of the last starts per key, and with ``burst < limit`` a cell-rate spacing
(GCRA) that lets ``burst`` starts through at once and the rest one per ``period / limit``. The
windows are derived from the runs' stored start times (rebuilt at start from
``Storage.throttle_starts``), so a restart neither forgets nor refills them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from runtime.flow import Throttle


@dataclass(slots=True)
class _Window:
    starts: deque[float] = field(default_factory=deque)
    tat: float = 0.0  # theoretical arrival time of the next start (GCRA)


class Windows:
    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def next_start(self, key: str, spec: Throttle, now: float) -> float:
        """The earliest time at or after ``now`` when a run under ``key`` may start."""
        window = self._windows.get(key)
        if window is None:
            return now
        period = spec.period_seconds
        while window.starts and window.starts[0] <= now - period:
            window.starts.popleft()
        at = now
        if len(window.starts) >= spec.limit:
            # The oldest start in the window leaves it after `period`; each later one after
            # it makes room for one more.
            at = max(at, window.starts[len(window.starts) - spec.limit] + period)
        burst = spec.burst or spec.limit
        if burst < spec.limit:
            interval = period / spec.limit
            at = max(at, window.tat - (burst - 1) * interval)
        return at

    def record(self, key: str, spec: Throttle, at: float) -> None:
        """A run under ``key`` started at ``at``."""
        window = self._windows.setdefault(key, _Window())
        window.starts.append(at)
        while len(window.starts) > spec.limit:
            window.starts.popleft()
        interval = spec.period_seconds / spec.limit
        window.tat = max(window.tat, at) + interval
