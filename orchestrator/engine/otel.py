"""Trace export through OpenTelemetry (SPEC §12, the ``otel`` extra). Imported only when
``[telemetry]`` asks for traces, so the engine runs without the extra installed.

Spans are built after the fact from the run's committed journal (``spans.run_spans``), with
explicit ids and times: a run that sleeps for a week holds no open span, and a second export of
the same run (a crash before the batch left, a recovery) repeats the same ids. They leave when
the run ends, and, so that a long run is visible while it goes on, whenever it parks: what has
finished by then (steps, resolved waits), at most once per ``progress_every`` seconds per run
(a later park inside that window schedules one export at its end). The run's own span leaves
when it ends. The SDK's ``BatchSpanProcessor`` exports on its own thread, so the daemon's loop
never waits for the collector; each export is one journal read.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

import storage
from orchestrator.engine import spans

log = structlog.get_logger("orchestrator.otel")


class _JournalIds(IdGenerator):
    """Hands the SDK the ids a span must have (set just before ``start_span`` on the same
    thread); any other span (the user's, on another thread) gets random ones."""

    def __init__(self) -> None:
        self._next = threading.local()
        self._random = RandomIdGenerator()

    def set(self, trace_id: int, span_id: int) -> None:
        self._next.ids = (trace_id, span_id)

    def clear(self) -> None:
        self._next.ids = None

    def generate_trace_id(self) -> int:
        ids = getattr(self._next, "ids", None)
        return ids[0] if ids is not None else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        ids = getattr(self._next, "ids", None)
        if ids is None:
            return self._random.generate_span_id()
        self._next.ids = None
        return int(ids[1])


def otlp_exporter(endpoint: str) -> SpanExporter:
    """OTLP over HTTP/protobuf; ``endpoint`` is the collector's base URL (``/v1/traces`` is
    added when it has no path)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    url = endpoint.rstrip("/")
    if url.count("/") <= 2:  # scheme://host[:port] only
        url += "/v1/traces"
    return OTLPSpanExporter(endpoint=url)


def from_config(storage_: storage.Storage, otlp_endpoint: str, console: bool,
                service_name: str) -> OtelTracing:
    """The daemon's tracing: batch export to what ``[telemetry]`` names; the provider becomes
    the process's global one when none is set, so spans the user's step code makes go along."""
    exporters = ([otlp_exporter(otlp_endpoint)] if otlp_endpoint else []) + (
        [console_exporter()] if console else [])
    return OtelTracing(storage_, exporters, service_name=service_name, install_global=True)


def console_exporter() -> SpanExporter:
    """One JSON object per span on stdout."""
    return ConsoleSpanExporter(out=sys.stdout,
                               formatter=lambda span: span.to_json(indent=None) + "\n")


@dataclass(slots=True)
class _Live:
    """What was exported of a run still going (dropped when it ends)."""

    last: float  # monotonic time of the last progress export
    sent: set[int] = field(default_factory=set)  # span ids exported
    later: asyncio.TimerHandle | None = None  # a progress export due at the window's end


class OtelTracing:
    """The engine's ``RunTracing``: step scopes, and the spans of every run, as it parks and
    when it ends."""

    def __init__(
        self,
        storage_: storage.Storage,
        exporters: list[SpanExporter],
        *,
        service_name: str = "wf",
        batch: bool = True,
        install_global: bool = False,
        progress_every: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._storage = storage_
        self._every = progress_every
        self._monotonic = monotonic
        self._live: dict[str, _Live] = {}
        self._ids = _JournalIds()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}), id_generator=self._ids
        )
        for exporter in exporters:
            processor: SpanProcessor = (BatchSpanProcessor(exporter) if batch
                                        else SimpleSpanProcessor(exporter))
            self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("wf-engine")
        self._pending: set[asyncio.Task[None]] = set()
        # The user's instrumentation in step functions then exports to the same place.
        # set_tracer_provider keeps the first provider set and warns: only when none is.
        if install_global and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(self.provider)

    # --- RunTracing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def step_scope(self, run: storage.RunRecord, step_id: str, attempt: int) -> Iterator[None]:
        ctx = spans.step_context(run, step_id, attempt)
        span = NonRecordingSpan(SpanContext(
            ctx.trace_id, ctx.span_id, is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if ctx.sampled else TraceFlags.DEFAULT),
        ))
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def run_ended(self, run_id: str) -> None:
        live = self._live.pop(run_id, None)
        if live is not None and live.later is not None:
            live.later.cancel()
        self._spawn(self._export_run(run_id, live.sent if live else None), run_id)

    def run_parked(self, run_id: str) -> None:
        now = self._monotonic()
        live = self._live.get(run_id)
        if live is None:
            self._live[run_id] = _Live(now)
        elif live.later is not None:
            return  # an export is already due at the end of the window
        elif now - live.last < self._every:
            live.later = asyncio.get_running_loop().call_later(
                live.last + self._every - now, self._progress_due, run_id)
            return
        else:
            live.last = now
        self._spawn(self._export_progress(run_id), run_id)

    def _progress_due(self, run_id: str) -> None:
        live = self._live.get(run_id)
        if live is not None:
            live.later = None
            live.last = self._monotonic()
            self._spawn(self._export_progress(run_id), run_id)

    def _spawn(self, coro: Coroutine[Any, Any, None], run_id: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"trace:{run_id}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Export what ended runs are still owed, then flush the processor (on a thread: the
        exporter may block on the network)."""
        for live in self._live.values():
            if live.later is not None:
                live.later.cancel()
        self._live.clear()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await asyncio.to_thread(self.provider.shutdown)

    # --- export -------------------------------------------------------------------------------
    async def _load(self, run_id: str) -> storage.Journal | None:
        try:
            return await self._storage.load_journal(run_id)
        except storage.StorageError as exc:  # traces are best effort: the run is committed
            log.warning("trace.export_failed", run_id=run_id, error=str(exc))
            return None

    async def _export_run(self, run_id: str, sent: set[int] | None) -> None:
        journal = await self._load(run_id)
        if journal is not None:
            self.export(journal, skip=sent or set())

    async def _export_progress(self, run_id: str) -> None:
        journal = await self._load(run_id)
        live = self._live.get(run_id)
        if journal is None or live is None:  # ended meanwhile: its final export covers it
            return
        for record in spans.run_spans(journal):
            if record.done and record.parent_id is not None and record.span_id not in live.sent:
                live.sent.add(record.span_id)
                self._emit(record)

    def export(self, journal: storage.Journal, skip: set[int] | frozenset[int] = frozenset()
               ) -> None:
        """Hand every span of one run to the processor (but those in ``skip``, sent already
        while it went on)."""
        for record in spans.run_spans(journal):
            if record.span_id not in skip:
                self._emit(record)

    def _emit(self, rec: spans.SpanRecord) -> None:
        ctx: Any
        if rec.parent_id is None:
            ctx = otel_context.Context()  # a root: the trace id comes from the id generator
        else:
            flags = TraceFlags(TraceFlags.SAMPLED if rec.sampled else TraceFlags.DEFAULT)
            parent = SpanContext(rec.trace_id, rec.parent_id, is_remote=rec.remote_parent,
                                 trace_flags=flags)
            ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        self._ids.set(rec.trace_id, rec.span_id)
        span = self._tracer.start_span(rec.name, context=ctx, attributes=rec.attributes,
                                       start_time=_ns(rec.start))
        self._ids.clear()  # consumed by start_span unless the provider is disabled
        if rec.error is not None:
            span.set_status(Status(StatusCode.ERROR, rec.error))
        span.end(end_time=_ns(rec.end))


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)
