"""What the engine counts in memory for ``/metrics`` (SPEC §12): step attempts and their
durations by workflow and outcome, timer lag by timer kind, events received. Plain dict and list
operations on the event loop (about a microsecond per step); the HTTP side reads snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.tally import LATENCY_BUCKETS, Histograms

# Step bodies and timer lag: 1 ms .. 1 h.
STEP_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
                                   60.0, 300.0, 900.0, 3600.0)


@dataclass(slots=True)
class EngineTallies:
    steps: Histograms = field(default_factory=lambda: Histograms(STEP_BUCKETS))
    """(workflow id, outcome ``ok`` | ``error``) → attempt durations, seconds."""
    timer_lag: Histograms = field(default_factory=lambda: Histograms(LATENCY_BUCKETS))
    """(timer kind,) → claimed at − due at, seconds."""
    events_received: int = 0  # new events committed (a re-sent event id is not counted)
