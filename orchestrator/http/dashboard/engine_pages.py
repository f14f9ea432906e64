"""The engine health page (charts of the last hour from in-memory figures, never a table
scan) and the daemons page (one row per daemon; SQLite has one) of SPEC §12."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from orchestrator.http.daemons import Daemons, uptime
from orchestrator.http.dashboard import charts
from orchestrator.http.dashboard.render import page
from orchestrator.http.history import History, Point


@dataclass(frozen=True, slots=True)
class Chart:
    key: str
    title: str
    unit: str
    points: Callable[[History], list[Point]]
    scale: float = 1.0


def _rate(name: str) -> Callable[[History], list[Point]]:
    return lambda h: h.rate(name)


def _level(name: str) -> Callable[[History], list[Point]]:
    return lambda h: h.level(name)


def _ratio(num: str, den: str) -> Callable[[History], list[Point]]:
    return lambda h: h.ratio(num, den)


CHARTS: Final = (
    Chart("runs_finished", "Runs ended", "per s", _rate("runs_finished")),
    Chart("runs_started", "Runs submitted", "per s", _rate("runs_submitted")),
    Chart("storage_ops", "Journal writes (steps, waits, resolutions)", "per s",
          _rate("storage_ops")),
    Chart("storage_batches", "Commits (transactions)", "per s", _rate("storage_batches")),
    Chart("batch_size", "Commit batch size", "writes per commit",
          _ratio("storage_ops", "storage_batches")),
    Chart("run_latency", "Run latency, submit to end (mean)", "s",
          _ratio("run_duration_sum", "run_duration_count")),
    Chart("timers_fired", "Timers fired", "per s", _rate("timers_fired")),
    Chart("timer_lag", "Timer lag, due to fired (mean)", "ms",
          _ratio("timer_lag_seconds_total", "timers_fired"), 1e3),
    Chart("active_actors", "Active runs (actors)", "runs", _level("active_actors")),
    Chart("slot_queue_depth", "Queued for a slot", "runs", _level("slot_queue_depth")),
    Chart("storage_queued", "Writer queue", "writes", _level("storage_queued")),
    Chart("warm_runs", "Warm parked runs", "runs", _level("warm_runs")),
    Chart("db_bytes", "Database file", "MB", _level("db_bytes"), 1e-6),
)


class EnginePages:
    def __init__(self, history: History, daemons: Daemons) -> None:
        self.history = history
        self.daemons = daemons

    async def health_page(self, request: Request) -> Response:
        h = self.history
        h.sample_if_due()
        now = h.clock.now()
        window = h.interval * (h.samples.maxlen or len(h.samples))
        drawn = []
        for chart in CHARTS:
            points = [(t, v * chart.scale) for t, v in chart.points(h)]
            drawn.append({"key": chart.key, "title": chart.title, "unit": chart.unit,
                          "last": charts.number(points[-1][1]) if points else "",
                          "svg": charts.line(points, now=now, window=window,
                                             name=chart.title, unit=chart.unit)})
        return page(request, "health.html", nav="health", charts=drawn,
                    figures=[(k, charts.number(v)) for k, v in sorted(h.latest().items())],
                    interval=h.interval,
                    window=window, samples=len(h.samples))

    async def daemons_page(self, request: Request) -> Response:
        now = self.history.clock.now()
        rows = [{"info": d, "uptime": uptime(d, now)} for d in self.daemons()]
        return page(request, "daemons.html", nav="daemons", daemons=rows)
