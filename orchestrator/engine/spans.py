"""The span model of a run (SPEC §12 traces), built from its committed journal: no OpenTelemetry
import here, so the engine loads without the ``otel`` extra (``otel.py`` exports these).

One trace per run tree: a root run continues the ``traceparent`` it was submitted with, or
starts a trace whose id is derived from its run id; a child continues its parent's trace under
the parent's wait span for it (the child's stored ``traceparent``). Every span id is derived
from the run id and the journal entry it stands for, so exporting a run twice (a crash between
export and the next start, a recovery) gives the same ids and a backend keeps one copy.

Spans of a run: ``workflow <id>`` (created → finished), under it one ``step <step_id>`` per
attempt (started → finished), one ``wait <kind>`` per waitpoint (registered → resolved; kind
``sleep``, ``event``, ``signal``, ``token``, ``child`` or ``backoff``), one ``compensate
<step_id>`` per compensation (a point in time: the journal keeps only its end).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import storage

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
MAX_TRACEPARENT = 55  # "00-" + 32 + "-" + 16 + "-" + 2


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: int
    span_id: int
    sampled: bool = True

    def header(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str) -> TraceContext | None:
    """The context of a W3C ``traceparent`` (version 00), or None when it is not one (all-zero
    ids are invalid by the W3C rule)."""
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceContext(trace_id, span_id, bool(int(m.group(3), 16) & 1))


def _digest(*parts: str, size: int) -> int:
    h = hashlib.blake2b("\0".join(parts).encode(), digest_size=size).digest()
    return int.from_bytes(h, "big") or 1  # an all-zero id is invalid


def trace_id_for(run_id: str) -> int:
    return _digest("trace", run_id, size=16)


def span_id_for(run_id: str, entry: str) -> int:
    """The span id of ``entry`` ("run", "step:<id>:<attempt>", "wp:<wp_id>", ...) of a run."""
    return _digest("span", run_id, entry, size=8)


def run_trace(run: storage.RunRecord) -> tuple[int, TraceContext | None]:
    """(trace id, the remote parent of the run's span or None)."""
    parent = parse_traceparent(run.traceparent) if run.traceparent else None
    return (parent.trace_id if parent else trace_id_for(run.run_id)), parent


def step_context(run: storage.RunRecord, step_id: str, attempt: int) -> TraceContext:
    """The context a step attempt's body runs in: its own span, so the user's spans nest."""
    trace_id, parent = run_trace(run)
    sampled = parent.sampled if parent else True
    return TraceContext(trace_id, span_id_for(run.run_id, f"step:{step_id}:{attempt}"), sampled)


def child_traceparent(parent: storage.RunRecord, wp_id: str) -> str:
    """What a child run created for waitpoint ``wp_id`` of ``parent`` stores: the parent's
    trace, under the parent's wait span for the child."""
    trace_id, remote = run_trace(parent)
    sampled = remote.sampled if remote else True
    return TraceContext(trace_id, span_id_for(parent.run_id, f"wp:{wp_id}"), sampled).header()


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span, with explicit ids and times (epoch seconds), ready to export."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None  # None: a root span
    start: float
    end: float
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the status description of an ERROR span
    remote_parent: bool = False
    sampled: bool = True
    done: bool = True  # False: still open (a step in flight, a wait unresolved) in a live run


_WAIT_KINDS = {
    "DATETIME": "sleep", "EVENT": "event", "SIGNAL": "signal", "MANUAL": "token", "RUN": "child",
}


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return f"{code}: {message}" if code else str(message or error)
    return str(error)


def _error_code(error: Any) -> str | None:
    return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None


def run_spans(journal: storage.Journal) -> list[SpanRecord]:
    """Every span of one run, children first, the run's own span last. Of a run still going,
    what is still open (a step in flight, an unresolved wait, the run itself) has
    ``done=False``; an ended run's open waits end with it."""
    run = journal.run
    trace_id, remote = run_trace(run)
    sampled = remote.sampled if remote else True
    root = span_id_for(run.run_id, "run")
    end = run.finished_at if run.finished_at is not None else run.updated_at
    ended = run.status in storage.TERMINAL_STATUSES
    base = {"wf.run_id": run.run_id, "wf.workflow_id": run.workflow_id}
    out: list[SpanRecord] = []

    def add(name: str, entry: str, start: float, stop: float | None, attrs: dict[str, Any],
            error: Any = None) -> None:
        done = ended or stop is not None
        stop = start if stop is None else max(stop, start)
        out.append(SpanRecord(name, trace_id, span_id_for(run.run_id, entry), root, start, stop,
                              {**base, **attrs}, _error_text(error) if error else None,
                              sampled=sampled, done=done))

    for a in journal.attempts:
        if a.started_at is None:
            continue
        add(f"step {a.step_id}", f"step:{a.step_id}:{a.attempt}", a.started_at, a.finished_at,
            {"wf.step_id": a.step_id, "wf.attempt": a.attempt, "wf.step.outcome": str(a.status),
             **({"wf.error_code": _error_code(a.error)} if _error_code(a.error) else {})},
            a.error if str(a.status) != "ok" else None)
    for w in journal.waitpoints:
        kind = "backoff" if w.wp_id.startswith("retry:") else _WAIT_KINDS.get(str(w.kind),
                                                                              str(w.kind))
        attrs: dict[str, Any] = {"wf.waitpoint.id": w.wp_id, "wf.waitpoint.kind": kind,
                                 "wf.waitpoint.outcome": _wait_outcome(w)}
        if w.event_type:
            attrs["wf.event.type"] = w.event_type
        if w.signal_name:
            attrs["wf.signal.name"] = w.signal_name
        add(f"wait {kind}", f"wp:{w.wp_id}", w.registered_at,
            w.resolved_at if w.resolved_at is not None else end if ended else None,
            attrs)
    for c in journal.compensations:
        add(f"compensate {c.step_id}", f"compensate:{c.step_id}", c.finished_at, c.finished_at,
            {"wf.step_id": c.step_id, "wf.compensation.outcome": str(c.status)},
            c.error if str(c.status) != "completed" else None)
    attrs = {"wf.status": str(run.status), "wf.attempt": run.attempt,
             "wf.recoveries": run.recoveries}
    if run.parent_run_id:
        attrs["wf.parent_run_id"] = run.parent_run_id
    if _error_code(run.error):
        attrs["wf.error_code"] = _error_code(run.error)
    failed = run.status is not storage.RunStatus.COMPLETED
    out.append(SpanRecord(
        f"workflow {run.workflow_id}", trace_id, root, remote.span_id if remote else None,
        run.created_at, max(end, run.created_at), {**base, **attrs},
        (_error_text(run.error) if run.error else str(run.status)) if failed else None,
        remote_parent=remote is not None, sampled=sampled, done=ended,
    ))
    return out


def _wait_outcome(w: storage.WaitpointRecord) -> str:
    if w.resolved_at is None:
        return "open"
    if str(w.source) == "timeout":
        return "timed_out"
    return "failed" if w.error else "resolved"
