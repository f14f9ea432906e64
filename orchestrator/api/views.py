"""Records as the JSON the service returns (SPEC §6): one place for the wire shape of a run, a
step, a waitpoint, a stream chunk. The socket server, the HTTP API, the client and the engine's
live feeds all send what these functions build; storage knows nothing of it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Protocol

from storage import records

JSONDict = dict[str, Any]

_RUN_FIELDS = tuple(f.name for f in fields(records.RunRecord))
_RUN_VALUES = attrgetter(*_RUN_FIELDS)  # one C call for every field (twice per run: submit, wait)


def run(record: records.RunRecord) -> JSONDict:
    """The run record of SPEC §6 (no deep copy: the values are already JSON)."""
    out = dict(zip(_RUN_FIELDS, _RUN_VALUES(record), strict=True))
    out["status"] = str(record.status)
    out["tags"] = list(record.tags)
    return out


def runs(found: Iterable[records.RunRecord]) -> list[JSONDict]:
    return [run(r) for r in found]


class ChunkLike(Protocol):
    """A stream chunk as storage reads it or as the runtime records it live."""

    @property
    def stream_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def encoding(self) -> str: ...
    @property
    def chunk(self) -> Any: ...
    @property
    def final(self) -> bool: ...
    @property
    def at(self) -> float: ...


def chunk(item: ChunkLike) -> JSONDict:
    """A stream chunk as ``stream`` sends it (stored and live alike)."""
    return {
        "stream_id": item.stream_id,
        "seq": item.seq,
        "encoding": item.encoding,
        "chunk": item.chunk,
        "final": item.final,
        "at": item.at,
    }


def step(record: records.StepRecord, attempts: Sequence[records.StepAttemptRecord]) -> JSONDict:
    duration = None
    if record.started_at is not None and record.finished_at is not None:
        duration = round((record.finished_at - record.started_at) * 1000, 3)
    return {
        "step_id": record.step_id,
        "position": record.position,
        "status": str(record.status),
        "attempt": record.attempt,
        "output": record.output,
        "error": record.error,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_ms": duration,
        "runtime": record.runtime,
        "attempts": [
            {"attempt": a.attempt, "status": str(a.status), "error": a.error,
             "started_at": a.started_at, "finished_at": a.finished_at}
            for a in attempts
        ],
    }


def waitpoint(wp: records.WaitpointRecord) -> JSONDict:
    return {
        "waitpoint_id": wp.wp_id,
        "kind": str(wp.kind),
        "status": str(wp.status),
        "event_type": wp.event_type,
        "signal": wp.signal_name,
        "token_id": wp.token_id,
        "child_run_id": wp.meta.get("child_run_id") if isinstance(wp.meta, dict) else None,
        "match": wp.match,
        "registered_at": wp.registered_at,
        "due_at": wp.due_at,
        "timeout_at": wp.timeout_at,
        "resolved_at": wp.resolved_at,
        "source": str(wp.source) if wp.source else None,
        "payload": wp.payload,
        "error": wp.error,
    }


def run_detail(journal: records.Journal) -> JSONDict:
    """What ``get`` returns: the run record plus its steps (with every attempt), waitpoints,
    metadata, compensations and the audit trail of its amendments."""
    attempts: dict[str, list[records.StepAttemptRecord]] = {}
    for attempt in journal.attempts:
        attempts.setdefault(attempt.step_id, []).append(attempt)
    out = run(journal.run)
    out["steps"] = [step(s, attempts.get(s.step_id, [])) for s in journal.steps]
    out["waitpoints"] = [waitpoint(w) for w in journal.waitpoints]
    out["metadata"] = dict(journal.metadata)
    out["compensations"] = [
        {"step_id": c.step_id, "status": str(c.status), "error": c.error,
         "finished_at": c.finished_at}
        for c in journal.compensations
    ]
    out["audit"] = [amendment(a) for a in journal.amendments]
    return out


def amendment(record: records.AmendmentRecord) -> JSONDict:
    """One row of a run's audit trail (``amend``)."""
    return {"seq": record.seq, "action": "amend", "step_id": record.step_id, "at": record.at,
            "peer_uid": record.peer_uid, "reason": record.reason, "old": record.old,
            "new": record.new}


def schedule(record: records.ScheduleRecord) -> JSONDict:
    """A schedule as ``schedules`` lists it: its rule (``cron 0 3 * * *``, ``every 3600s``,
    ``at <time>``), zone, next fire (None while paused), last fire and counters."""
    spec = record.spec if isinstance(record.spec, dict) else {}
    return {
        "name": record.name,
        "workflow_id": record.workflow_id,
        "rule": _rule(spec),
        "timezone": spec.get("timezone") or "UTC",
        "next_fire_at": None if record.paused else record.next_fire_at,
        "last_fire_at": record.last_fire_at,
        "paused": record.paused,
        "skipped": record.skipped,
        "missed": record.missed,
        "fired": record.fired,
        "overlap": spec.get("overlap") or "skip",
        "jitter": spec.get("jitter") or None,
        "input": spec.get("input"),
        "source": str(record.source),
        "next_due_at": None if record.paused else record.next_due_at,
        "last_run_id": record.last_run_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def _rule(spec: dict[str, Any]) -> str:
    if spec.get("cron") is not None:
        return f"cron {spec['cron']}"
    if spec.get("every") is not None:
        return f"every {spec['every']:g}s"
    if spec.get("at") is not None:
        at = datetime.fromtimestamp(float(spec["at"]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"at {at}"
    return "-"


def archives(found: Sequence[records.ArchiveRecord]) -> list[JSONDict]:
    """A retried run's previous attempts (``get``'s ``previous_attempts``): how each ended,
    and what the retry set aside from its journal."""
    return [
        {"attempt": a.attempt, "retry": a.seq, "mode": a.mode, "retried_at": a.archived_at,
         "status": str(a.status), "output": a.output, "error": a.error,
         "started_at": a.started_at, "finished_at": a.finished_at, "journal": a.journal}
        for a in found
    ]


def daemon(record: records.DaemonRecord, *, this: bool) -> JSONDict:
    """One registered daemon (``wf daemons``); times are the database clock's."""
    return {
        "daemon_id": record.daemon_id, "name": record.name, "host": record.host,
        "pid": record.pid, "version": record.version, "socket": record.socket,
        "http": record.http, "started_at": record.started_at, "renewed_at": record.renewed_at,
        "lease_until": record.lease_until, "live": record.live, "runs": record.runs,
        "this": this,
    }
