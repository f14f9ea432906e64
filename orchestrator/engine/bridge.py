"""Translation between the runtime's journal entries and storage ops/records.

The runtime speaks in journal entries (``runtime.journal``); storage speaks in ops and records
(``storage.ops``, ``storage.records``). This module is the only place that knows both.
"""

from __future__ import annotations

from typing import Any

import storage
from runtime import journal as rj
from runtime import matching
from runtime.status import ResolutionSource, WaitpointKind
from storage import faults

_STEP_STATUS = {"ok": storage.StepStatus.COMPLETED, "err": storage.StepStatus.FAILED}
_COMP_STATUS = {
    "ok": storage.CompensationStatus.COMPLETED,
    "err": storage.CompensationStatus.FAILED,
}


def step_op(run_id: str, entry: rj.StepAttempt) -> storage.RecordStepAttempt:
    return storage.RecordStepAttempt(
        run_id=run_id,
        step_id=entry.step_id,
        attempt=entry.attempt,
        status=_STEP_STATUS[entry.status],
        position=entry.position,
        output=entry.output,
        error=entry.error,
        started_at=entry.started_at,
        finished_at=entry.finished_at,
        runtime=entry.runtime,
        retry_at=entry.retry_at,
    )


def register_op(run_id: str, entry: rj.WaitpointRegistered) -> storage.RegisterWaitpoint:
    meta = entry.meta
    kind = storage.WaitpointKind(str(entry.kind))
    timer_kind = None
    if entry.wp_id.startswith("retry:"):
        timer_kind = storage.TimerKind.RETRY
    return storage.RegisterWaitpoint(
        run_id=run_id,
        wp_id=entry.wp_id,
        kind=kind,
        registered_at=entry.registered_at,
        meta=meta,
        event_type=meta.get("event_type") if kind is storage.WaitpointKind.EVENT else None,
        signal_name=meta.get("signal") if kind is storage.WaitpointKind.SIGNAL else None,
        match=meta.get("match"),
        token_id=meta.get("token_id") if kind is storage.WaitpointKind.MANUAL else None,
        due_at=entry.due_at,
        timeout_at=entry.timeout_at,
        timer_kind=timer_kind,
        lookback_from=meta.get("lookback_from"),
        matches=matching.matches if meta.get("match") is not None else None,
    )


def metadata_op(
    run_id: str, target_run_id: str, entry: rj.MetadataOp
) -> storage.ApplyMetadata:
    return storage.ApplyMetadata(
        run_id=target_run_id,
        origin_run_id=run_id,
        op_index=entry.index,
        op=storage.MetadataOpKind(entry.op),
        key=entry.key,
        value=entry.value,
    )


def chunk_op(run_id: str, entry: rj.StreamChunk) -> storage.AppendStreamChunk:
    return storage.AppendStreamChunk(
        run_id=run_id,
        stream_id=entry.stream_id,
        seq=entry.seq,
        encoding=entry.encoding,
        chunk=entry.chunk,
        final=entry.final,
        at=entry.at,
    )


def compensation_op(run_id: str, entry: rj.CompensationRan) -> storage.RecordCompensation:
    return storage.RecordCompensation(
        run_id=run_id,
        step_id=entry.step_id,
        status=_COMP_STATUS[entry.status],
        finished_at=entry.finished_at,
        error=entry.error,
    )


def resolution(wp: storage.WaitpointRecord) -> rj.WaitpointResolved:
    """The runtime view of a resolved waitpoint record."""
    return rj.WaitpointResolved(
        wp_id=wp.wp_id,
        kind=WaitpointKind(str(wp.kind)),
        resolved_at=wp.resolved_at or wp.registered_at,
        source=ResolutionSource(str(wp.source or "live")),
        payload=wp.payload,
        error=wp.error,
        matched_event_id=wp.matched_event_id,
    )


def registration(wp: storage.WaitpointRecord) -> rj.WaitpointRegistered:
    return rj.WaitpointRegistered(
        wp_id=wp.wp_id,
        kind=WaitpointKind(str(wp.kind)),
        registered_at=wp.registered_at,
        due_at=wp.due_at,
        timeout_at=wp.timeout_at,
        meta=dict(wp.meta or {}),
    )


def runtime_journal(record: storage.Journal) -> rj.Journal:
    """Rebuild the runtime's journal of a run from what storage holds."""
    positions = {s.step_id: s.position for s in record.steps}
    journal = rj.Journal()
    attempts = () if faults.mutant("SKIP_STEP_DEDUP") else record.attempts
    for attempt in attempts:
        journal.apply(
            rj.StepAttempt(
                step_id=attempt.step_id,
                position=positions.get(attempt.step_id, 0),
                attempt=attempt.attempt,
                status="ok" if attempt.status is storage.StepStatus.COMPLETED else "err",
                output=attempt.output,
                error=attempt.error,
                started_at=attempt.started_at or 0.0,
                finished_at=attempt.finished_at or 0.0,
                retry_at=attempt.retry_at,
            )
        )
    for wp in record.waitpoints:
        journal.apply(registration(wp))
        if not wp.is_waiting:
            journal.apply(resolution(wp))
    for comp in record.compensations:
        journal.apply(
            rj.CompensationRan(
                step_id=comp.step_id,
                status="ok" if comp.status is storage.CompensationStatus.COMPLETED else "err",
                error=comp.error,
                finished_at=comp.finished_at,
            )
        )
    for chunk in record.stream_chunks:
        journal.apply(
            rj.StreamChunk(
                stream_id=chunk.stream_id,
                seq=chunk.seq,
                encoding=chunk.encoding,  # type: ignore[arg-type]  # stored as written
                chunk=chunk.chunk,
                final=chunk.final,
                at=chunk.at,
            )
        )
    journal.metadata = dict(record.metadata)
    journal.metadata_ops = record.metadata_ops
    return journal


def step_json(
    step: storage.StepRecord, attempts: list[storage.StepAttemptRecord]
) -> dict[str, Any]:
    duration = None
    if step.started_at is not None and step.finished_at is not None:
        duration = round((step.finished_at - step.started_at) * 1000, 3)
    return {
        "step_id": step.step_id,
        "position": step.position,
        "status": str(step.status),
        "attempt": step.attempt,
        "output": step.output,
        "error": step.error,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "duration_ms": duration,
        "runtime": step.runtime,
        "attempts": [
            {"attempt": a.attempt, "status": str(a.status), "error": a.error,
             "started_at": a.started_at, "finished_at": a.finished_at}
            for a in attempts
        ],
    }


def waitpoint_json(wp: storage.WaitpointRecord) -> dict[str, Any]:
    return {
        "waitpoint_id": wp.wp_id,
        "kind": str(wp.kind),
        "status": str(wp.status),
        "event_type": wp.event_type,
        "signal": wp.signal_name,
        "token_id": wp.token_id,
        "match": wp.match,
        "registered_at": wp.registered_at,
        "due_at": wp.due_at,
        "timeout_at": wp.timeout_at,
        "resolved_at": wp.resolved_at,
        "source": str(wp.source) if wp.source else None,
        "payload": wp.payload,
        "error": wp.error,
    }
