"""Translation between the runtime's vocabulary and storage's.

The runtime speaks in journal entries and run facts (``runtime.journal``, ``runtime.facts``);
storage speaks in ops and records (``storage.ops``, ``storage.records``). This module is the only
place that knows both: the actor and ``wf replay`` build a run's journal and facts here, so a
replay sees exactly what a live resume sees.
"""

from __future__ import annotations

from typing import Any

import storage
from runtime import journal as rj
from runtime import matching
from runtime.facts import RunFacts
from runtime.status import ResolutionSource, WaitpointKind
from runtime.workflow import WorkflowDefinition

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
    journal.reopened = set(record.reopened_steps)
    for attempt in record.attempts:
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


def child_error(
    child_run_id: str, status: str, error: dict[str, Any] | None
) -> dict[str, Any]:
    """What a parent's invoke wait resolves with when its child ends without completing."""
    original = error or {}
    return {
        "code": original.get("code") or status.upper(),
        "message": original.get("message") or f"child run ended {status}",
        "status": status,
        "child_run_id": child_run_id,
        "error": original or None,
    }


def run_facts(run: storage.RunRecord, definition: WorkflowDefinition) -> RunFacts:
    """The one ``RunRecord → RunFacts``: what ``ctx.run``/``ctx.workflow`` say, live and on
    replay alike (a replay that saw other facts would take other branches)."""
    return RunFacts(
        run_id=run.run_id,
        workflow_id=run.workflow_id,
        workflow_version=run.workflow_version or definition.version,
        started_at=run.started_at if run.started_at is not None else run.created_at,
        number=run.number,
        attempt=run.attempt,
        triggered_by=run.triggered_by or "api",
        tags=run.tags,
        invocation_count=run.recoveries + 1,
        parent_run_id=run.parent_run_id,
        root_run_id=run.root_run_id,
        compute_used=run.compute_seconds,
    )
