"""``/metrics`` (SPEC §12): Prometheus text from in-memory state only, so a scrape never scans a
table.

Counters and histograms are fed by :meth:`Metrics.observe_change`, which the composer hooks
onto the engine's run status feed (one call per committed status change: a few dict
operations). Gauges are read at scrape time from a ``gauges`` callable the composer supplies
(supervisor and scheduler counts, file sizes). Labels are code-defined values only: registered
workflow ids, statuses, gauge names; never a run id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.service import TERMINAL_STATUSES
from runtime.clock import Clock, SystemClock

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# 10 ms .. 7 days
DURATION_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600,
                           86400, 7 * 86400)

Gauges = Callable[[], Mapping[str, float | None]]
"""``name -> value`` read at scrape time; each becomes ``wf_<name>``; None = no sample."""


class HistogramSnapshot(Protocol):
    """``storage.tally.HistogramSnapshot``'s shape (the HTTP wing does not import storage)."""

    @property
    def bounds(self) -> tuple[float, ...]: ...

    @property
    def counts(self) -> tuple[int, ...]: ...

    @property
    def sum(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Tallied:
    """One family read from the engine's in-memory tallies at scrape time: a histogram per
    label tuple, and optionally a ``<counter>_total`` counting its observations (attempts of
    a step histogram, fires of a timer kind)."""

    name: str
    doc: str
    labels: tuple[str, ...]
    series: Mapping[tuple[str, ...], HistogramSnapshot]
    counter: str = ""  # also expose the counts as this counter (without ``_total``)
    counter_doc: str = ""


@dataclass(frozen=True, slots=True)
class Count:
    """A plain counter kept in memory (exposed as ``<name>_total``)."""

    name: str
    doc: str
    value: float


@dataclass(frozen=True, slots=True)
class LabelledGauge:
    """A gauge with one label, read from a value the daemon refreshes off the scrape path."""

    name: str
    doc: str
    label: str
    values: Mapping[str, float]


Tallies = Callable[[], Iterable[Tallied | Count | LabelledGauge]]


def _le(bound: float) -> str:
    return repr(float(bound))


class _TallyCollector(Collector):
    def __init__(self, tallies: Tallies) -> None:
        self._tallies = tallies

    def collect(self) -> Iterator[Metric]:
        for t in self._tallies():
            if isinstance(t, Count):
                yield CounterMetricFamily(t.name, t.doc, value=t.value)
                continue
            if isinstance(t, LabelledGauge):
                gauge = GaugeMetricFamily(t.name, t.doc, labels=[t.label])
                for value, n in sorted(t.values.items()):
                    gauge.add_metric([value], n)
                yield gauge
                continue
            hist = HistogramMetricFamily(t.name, t.doc, labels=list(t.labels))
            counter = (CounterMetricFamily(t.counter, t.counter_doc, labels=list(t.labels))
                       if t.counter else None)
            for labels, snap in sorted(t.series.items()):
                running, buckets = 0, []
                for bound, n in zip((*snap.bounds, float("inf")), snap.counts, strict=True):
                    running += n
                    buckets.append(("+Inf" if bound == float("inf") else _le(bound), running))
                hist.add_metric(list(labels), buckets, snap.sum)
                if counter is not None:
                    counter.add_metric(list(labels), running)
            yield hist
            if counter is not None:
                yield counter


class _GaugeCollector(Collector):
    def __init__(self, gauges: Gauges) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in sorted(self._gauges().items()):
            if value is not None:
                yield GaugeMetricFamily(f"wf_{name}", f"wf {name.replace('_', ' ')}", value)


class _BuildInfo(Collector):
    def __init__(self, version: str) -> None:
        self._version = version

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("wf_build_info", "wf version", labels=["version"])
        family.add_metric([self._version], 1)
        yield family


class Metrics:
    """One registry per daemon (not the process-global one: tests open many daemons)."""

    def __init__(self, gauges: Gauges | None = None, *, clock: Clock | None = None,
                 version: str = "", tallies: Tallies | None = None) -> None:
        self.clock = clock or SystemClock()
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs_submitted = Counter("wf_runs_submitted", "runs submitted (entered pending)",
                                      ["workflow"], registry=r)
        self.runs_started = Counter(
            "wf_runs_started", "runs that began running (first time this daemon saw it)",
            ["workflow"], registry=r)
        self.runs_finished = Counter("wf_runs_finished", "runs that reached a terminal status",
                                     ["workflow", "status"], registry=r)
        self.run_duration = Histogram(
            "wf_run_duration_seconds", "submit to terminal, for runs this daemon saw start",
            ["workflow", "status"], buckets=DURATION_BUCKETS, registry=r)
        self.status_changes = Counter("wf_run_status_changes", "committed run status changes",
                                      ["status"], registry=r)
        self.http_requests = Counter("wf_http_requests", "HTTP requests served",
                                     ["route", "code"], registry=r)
        r.register(_BuildInfo(version or "unknown"))
        r.register(_GaugeCollector(lambda: dict(gauges() if gauges else {})))
        if tallies is not None:
            r.register(_TallyCollector(tallies))
        self._started_at: dict[str, float] = {}  # active runs only: popped at terminal
        self._running: set[str] = set()  # active runs seen running: popped at terminal
        self._gauges = gauges
        # Plain totals beside the labelled counters: what the health page's charts sample.
        self.totals: dict[str, float] = dict.fromkeys(
            ("runs_submitted", "runs_started", "runs_finished", "run_status_changes",
             "run_duration_sum", "run_duration_count"), 0.0)

    def observe_change(self, run_id: str, status: str, workflow_id: str | None) -> None:
        """A run status change was committed (called by the engine's change feed)."""
        workflow = workflow_id or "unknown"
        totals = self.totals
        self.status_changes.labels(status).inc()
        totals["run_status_changes"] += 1
        if status in TERMINAL_STATUSES:
            self.runs_finished.labels(workflow, status).inc()
            totals["runs_finished"] += 1
            self._running.discard(run_id)
            started = self._started_at.pop(run_id, None)
            if started is not None:
                duration = max(0.0, self.clock.now() - started)
                self.run_duration.labels(workflow, status).observe(duration)
                totals["run_duration_sum"] += duration
                totals["run_duration_count"] += 1
        elif status == "pending" and run_id not in self._started_at:
            self.runs_submitted.labels(workflow).inc()
            totals["runs_submitted"] += 1
            self._started_at[run_id] = self.clock.now()
        elif status == "running" and run_id not in self._running:
            self._running.add(run_id)
            self.runs_started.labels(workflow).inc()
            totals["runs_started"] += 1

    def figures(self) -> dict[str, float | None]:
        """Every in-memory figure at once (the gauges and the totals): what the health page
        samples. Costs no table scan."""
        return {**(self._gauges() if self._gauges else {}), **self.totals}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


_AREAS: Final = ("api", "metrics", "healthz", "readyz", "login", "logout", "static")


def area(path: str) -> str:
    """A bounded label for a path: its first segment if known, else ``dashboard``."""
    first = path.lstrip("/").partition("/")[0]
    return first if first in _AREAS else "dashboard"


class CountingMiddleware:
    """``wf_http_requests_total{route, code}``: route is the path's area, never the path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        label = area(path[len(root):] if root and path.startswith(root) else path)

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.http_requests.labels(label, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)
