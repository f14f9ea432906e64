"""Fixed-bucket histograms cheap enough for a hot path (one bisect and two additions per
observation, no lock): the writer tallies each batch, the engine each step attempt and timer.
The ``/metrics`` endpoint turns snapshots into Prometheus histograms; nothing here imports
prometheus-client, so the engine runs without the HTTP side.

One writer per tally (its thread or the event loop); a reader on another thread may see a count
one observation ahead of the sum, which a scrape tolerates.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

# Seconds: 100 µs .. 10 s (commits, step bodies, timer lag, ...).
LATENCY_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                      0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Requests per group commit.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]  # upper bounds (``le``); an overflow bucket follows the last
    counts: tuple[int, ...]  # per bucket, not cumulative; len(bounds) + 1
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # value == bound: that bucket (le)
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.sum)


class Histograms:
    """One histogram per label tuple (values from a bounded set: workflow ids, kinds)."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.series: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        h = self.series.get(labels)
        if h is None:
            h = self.series[labels] = Histogram(self.bounds)
        h.observe(value)

    def snapshot(self) -> dict[tuple[str, ...], HistogramSnapshot]:
        return {labels: h.snapshot() for labels, h in list(self.series.items())}


@dataclass(slots=True)
class CommitTally:
    """What a storage writer observes once per group commit."""

    seconds: Histogram
    sizes: Histogram

    @classmethod
    def new(cls) -> CommitTally:
        return cls(Histogram(LATENCY_BUCKETS), Histogram(BATCH_BUCKETS))

    def observe(self, requests: int, seconds: float) -> None:
        self.seconds.observe(seconds)
        self.sizes.observe(requests)
