"""The last hour of the engine's in-memory figures, for the health page's charts (SPEC §12).

A :class:`History` samples a ``figures`` callable (the metrics' gauges and totals: no table
scan) every ``interval`` seconds into a ring of ``keep`` samples. Charts read a figure as it
was (:meth:`History.level`), as a rate between samples (:meth:`History.rate`), or as the ratio
of two counters' growth (:meth:`History.ratio`: ops per commit, mean run duration).
A counter that went down (the daemon restarted under an embedded app) gives no point.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from runtime.clock import Clock, SystemClock

INTERVAL: Final = 10.0
KEEP: Final = 360  # an hour at the default interval

Figures = Callable[[], Mapping[str, float | None]]
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    values: Mapping[str, float]


class History:
    def __init__(self, figures: Figures, *, clock: Clock | None = None,
                 interval: float = INTERVAL, keep: int = KEEP) -> None:
        if interval <= 0 or keep < 2:
            raise ValueError(f"history: interval must be > 0 and keep >= 2, got "
                             f"{interval!r} and {keep!r}")
        self.figures = figures
        self.clock = clock or SystemClock()
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=keep)

    def sample(self) -> Sample:
        values = {k: float(v) for k, v in self.figures().items() if v is not None}
        taken = Sample(self.clock.now(), values)
        self.samples.append(taken)
        return taken

    def sample_if_due(self) -> None:
        """A sample now unless the last is younger than ``interval`` (a page view keeps the
        charts current even where no task samples, e.g. an app mounted by another)."""
        if not self.samples or self.clock.now() - self.samples[-1].at >= self.interval:
            self.sample()

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            self.sample_if_due()
            await asyncio.sleep(self.interval)

    def latest(self) -> Mapping[str, float]:
        return self.samples[-1].values if self.samples else {}

    def level(self, name: str) -> list[Point]:
        return [(s.at, s.values[name]) for s in self.samples if name in s.values]

    def rate(self, name: str) -> list[Point]:
        """Growth per second between consecutive samples."""
        return self._deltas(name, None)

    def ratio(self, numerator: str, denominator: str) -> list[Point]:
        """Growth of ``numerator`` per unit of growth of ``denominator`` (intervals where the
        denominator did not grow give no point)."""
        return self._deltas(numerator, denominator)

    def _deltas(self, name: str, per: str | None) -> list[Point]:
        out: list[Point] = []
        for a, b in itertools.pairwise(self.samples):
            if name not in a.values or name not in b.values:
                continue
            grew = b.values[name] - a.values[name]
            if per is None:
                span = b.at - a.at
            elif per in a.values and per in b.values:
                span = b.values[per] - a.values[per]
            else:
                continue
            if grew < 0 or span <= 0:
                continue
            out.append((b.at, grew / span))
        return out
