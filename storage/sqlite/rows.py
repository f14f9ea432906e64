"""Column lists and row → record conversion, shared by the writer and the readers.

Rows are plain tuples in the order of the ``*_COLUMNS`` strings; JSON columns hold TEXT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from storage import records
from storage.records import JSON

Row = Sequence[Any]

_loads = orjson.loads
_dumps = orjson.dumps


def dumps(value: JSON) -> str | None:
    """Encode a JSON value for a TEXT column; None is stored as NULL."""
    return None if value is None else _dumps(value).decode()


def loads(text: str | bytes | None) -> JSON:
    return None if text is None else _loads(text)


RUN_COLUMNS = (
    "run_id, number, workflow_id, workflow_version, status, input, output, error, tags, "
    "priority, idempotency_key, parent_run_id, root_run_id, triggered_by, attempt, created_at, "
    "scheduled_at, started_at, finished_at, updated_at, diverged, recoveries, compute_seconds, "
    "parent_wp_id, needs_resume, flow, throttle_key, expires_at, cancel_requested, paused, "
    "version_pinned, forked_from, traceparent, admitted_at"
)


def run_from_row(r: Row) -> records.RunRecord:
    return records.RunRecord(
        run_id=r[0],
        number=r[1],
        workflow_id=r[2],
        workflow_version=r[3],
        status=records.RunStatus(r[4]),
        input=loads(r[5]),
        output=loads(r[6]),
        error=loads(r[7]),
        tags=tuple(loads(r[8]) or ()),
        priority=r[9],
        idempotency_key=r[10],
        parent_run_id=r[11],
        root_run_id=r[12],
        triggered_by=r[13],
        attempt=r[14],
        created_at=r[15],
        scheduled_at=r[16],
        started_at=r[17],
        finished_at=r[18],
        updated_at=r[19],
        diverged=bool(r[20]),
        recoveries=r[21],
        compute_seconds=r[22],
        parent_wp_id=r[23],
        needs_resume=bool(r[24]),
        flow=loads(r[25]),
        throttle_key=r[26],
        expires_at=r[27],
        cancel_requested=loads(r[28]),
        paused=bool(r[29]),
        version_pinned=bool(r[30]),
        forked_from=loads(r[31]),
        traceparent=r[32],
        admitted_at=r[33],
    )


STEP_COLUMNS = (
    "r.run_id, s.step_id, s.position, s.attempt, s.status, s.output, s.error, s.started_at, "
    "s.finished_at, s.runtime, s.retry_at, s.journal_seq"
)
"""Columns of ``steps s JOIN runs r ON r.number = s.run_no``."""


def step_from_row(r: Row) -> records.StepRecord:
    return records.StepRecord(
        run_id=r[0],
        step_id=r[1],
        position=r[2],
        attempt=r[3],
        status=records.StepStatus(r[4]),
        output=loads(r[5]),
        error=loads(r[6]),
        started_at=r[7],
        finished_at=r[8],
        runtime=r[9],
        retry_at=r[10],
        journal_seq=r[11],
    )


ATTEMPT_COLUMNS = (
    "r.run_id, a.step_id, a.attempt, a.status, a.output, a.error, a.started_at, a.finished_at, "
    "a.retry_at, a.journal_seq"
)
"""Columns of ``step_attempts a JOIN runs r ON r.number = a.run_no``."""


def attempt_from_row(r: Row) -> records.StepAttemptRecord:
    return records.StepAttemptRecord(
        run_id=r[0],
        step_id=r[1],
        attempt=r[2],
        status=records.StepStatus(r[3]),
        output=loads(r[4]),
        error=loads(r[5]),
        started_at=r[6],
        finished_at=r[7],
        retry_at=r[8],
        journal_seq=r[9],
    )


WAITPOINT_COLUMNS = (
    "run_id, wp_id, kind, status, meta, event_type, signal_name, match, token_id, registered_at, "
    "due_at, timeout_at, resolved_at, payload, error, source, matched_event_id, journal_seq, "
    "resolved_journal_seq"
)


def waitpoint_from_row(r: Row) -> records.WaitpointRecord:
    return records.WaitpointRecord(
        run_id=r[0],
        wp_id=r[1],
        kind=records.WaitpointKind(r[2]),
        status=records.WaitpointStatus(r[3]),
        meta=loads(r[4]),
        event_type=r[5],
        signal_name=r[6],
        match=loads(r[7]),
        token_id=r[8],
        registered_at=r[9],
        due_at=r[10],
        timeout_at=r[11],
        resolved_at=r[12],
        payload=loads(r[13]),
        error=loads(r[14]),
        source=None if r[15] is None else records.ResolutionSource(r[15]),
        matched_event_id=r[16],
        journal_seq=r[17],
        resolved_journal_seq=r[18],
    )


EVENT_COLUMNS = "event_id, type, payload, received_at"


def event_from_row(r: Row) -> records.EventRecord:
    return records.EventRecord(event_id=r[0], type=r[1], payload=loads(r[2]), received_at=r[3])


SIGNAL_COLUMNS = "seq, run_id, name, payload, sent_at"


def signal_from_row(r: Row) -> records.SignalRecord:
    return records.SignalRecord(seq=r[0], run_id=r[1], name=r[2], payload=loads(r[3]), sent_at=r[4])


TIMER_COLUMNS = "timer_id, kind, due_at, run_id, wp_id, payload, created_at"


def timer_from_row(r: Row) -> records.TimerRecord:
    return records.TimerRecord(
        timer_id=r[0],
        kind=records.TimerKind(r[1]),
        due_at=r[2],
        run_id=r[3],
        wp_id=r[4],
        payload=loads(r[5]),
        created_at=r[6],
    )


SCHEDULE_COLUMNS = (
    "name, workflow_id, spec, next_fire_at, last_fire_at, updated_at, source, paused, "
    "next_due_at, last_run_id, fired, skipped, missed, created_at"
)


def schedule_from_row(r: Row) -> records.ScheduleRecord:
    return records.ScheduleRecord(
        name=r[0],
        workflow_id=r[1],
        spec=loads(r[2]),
        next_fire_at=r[3],
        last_fire_at=r[4],
        updated_at=r[5],
        source=records.ScheduleSource(r[6]),
        paused=bool(r[7]),
        next_due_at=r[8],
        last_run_id=r[9],
        fired=r[10],
        skipped=r[11],
        missed=r[12],
        created_at=r[13],
    )


CHUNK_COLUMNS = "run_id, stream_id, seq, encoding, chunk, final, at, journal_seq"


def chunk_from_row(r: Row) -> records.StreamChunk:
    return records.StreamChunk(
        run_id=r[0],
        stream_id=r[1],
        seq=r[2],
        encoding=r[3],
        chunk=loads(r[4]),
        final=bool(r[5]),
        at=r[6],
        journal_seq=r[7],
    )


COMPENSATION_COLUMNS = "run_id, step_id, status, error, finished_at, journal_seq"


def compensation_from_row(r: Row) -> records.CompensationRecord:
    return records.CompensationRecord(
        run_id=r[0],
        step_id=r[1],
        status=records.CompensationStatus(r[2]),
        error=loads(r[3]),
        finished_at=r[4],
        journal_seq=r[5],
    )


def token_from_row(r: Row) -> records.TokenRecord:
    """Row of ``token_id, run_id, wp_id, created_at, <waitpoint status>``."""
    return records.TokenRecord(
        token_id=r[0],
        run_id=r[1],
        wp_id=r[2],
        created_at=r[3],
        completed=r[4] != records.WaitpointStatus.WAITING.value,
    )


ARCHIVE_COLUMNS = (
    "run_id, seq, attempt, mode, archived_at, status, output, error, started_at, finished_at, "
    "journal"
)


def archive_from_row(r: Row) -> records.ArchiveRecord:
    return records.ArchiveRecord(
        run_id=r[0],
        seq=r[1],
        attempt=r[2],
        mode=r[3],
        archived_at=r[4],
        status=records.RunStatus(r[5]),
        output=loads(r[6]),
        error=loads(r[7]),
        started_at=r[8],
        finished_at=r[9],
        journal=loads(r[10]),
    )


AMENDMENT_COLUMNS = "run_id, seq, step_id, at, peer_uid, reason, old_value, new_value"


def amendment_from_row(r: Row) -> records.AmendmentRecord:
    return records.AmendmentRecord(
        run_id=r[0],
        seq=r[1],
        step_id=r[2],
        at=r[3],
        peer_uid=r[4],
        reason=r[5],
        old=loads(r[6]),
        new=loads(r[7]),
    )
