"""How an operator's interventions change the database: durable cancel and pause requests,
resume, retry (``resume`` or ``retrigger``) and paused workflows. Runs on the writer thread,
inside its transaction, like :mod:`storage.sqlite.mutations` (whose helpers it reuses).

A retry never deletes what a run recorded: the entries it takes out of the journal go into
``run_archive`` as one JSON document per retry, together with the run's previous end.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from storage import errors, ops, records
from storage.records import RunStatus, TimerKind, WaitpointKind, WaitpointStatus
from storage.sqlite import mutations, rows
from storage.sqlite.rows import dumps, loads

Conn = sqlite3.Connection

_SELECT_RUN = f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE run_id = ?"
_NON_TERMINAL = tuple(sorted(s.value for s in records.NON_TERMINAL_STATUSES))
_IN_NON_TERMINAL = ", ".join("?" for _ in _NON_TERMINAL)


def _load(conn: Conn, run_id: str) -> records.RunRecord:
    row = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
    if row is None:
        raise errors.NotFound("run", run_id)
    return rows.run_from_row(row)


# --- cancel ------------------------------------------------------------------------------------


def _cancel_request(at: float, reason: str | None, compensate: bool, code: str) -> dict[str, Any]:
    return {"reason": reason, "compensate": compensate, "code": code, "at": at}


def request_cancel(conn: Conn, op: ops.RequestCancel) -> records.RunRecord:
    run = _load(conn, op.run_id)
    if run.is_terminal or run.cancel_requested is not None:
        return run
    request = _cancel_request(op.at, op.reason, op.compensate, op.code)
    conn.execute(
        "UPDATE runs SET cancel_requested = ?, updated_at = ? WHERE run_id = ?",
        (dumps(request), op.at, op.run_id),
    )
    return dataclasses.replace(run, cancel_requested=request, updated_at=op.at)


def request_child_cancels(
    conn: Conn, op: ops.RequestChildCancels
) -> tuple[records.RunRecord, ...]:
    found = conn.execute(
        f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE parent_run_id = ? "
        f"AND parent_wp_id IS NOT NULL AND cancel_requested IS NULL "
        f"AND status IN ({_IN_NON_TERMINAL}) ORDER BY number",
        (op.parent_run_id, *_NON_TERMINAL),
    ).fetchall()
    request = _cancel_request(op.at, op.reason, op.compensate, "CANCELLED")
    children = [rows.run_from_row(r) for r in found]
    conn.executemany(
        "UPDATE runs SET cancel_requested = ?, updated_at = ? WHERE run_id = ?",
        [(dumps(request), op.at, child.run_id) for child in children],
    )
    return tuple(
        dataclasses.replace(child, cancel_requested=request, updated_at=op.at)
        for child in children
    )


# --- pause and resume --------------------------------------------------------------------------


def request_pause(conn: Conn, op: ops.RequestPause) -> records.RunRecord:
    run = _load(conn, op.run_id)
    if run.is_terminal:
        return run
    # A parked run is held right where it is: nothing drives it until a resolution, and those
    # are kept for the resume. Any other status is the actor's (or admission's) to change.
    status = RunStatus.PAUSED if run.status is RunStatus.WAITING else run.status
    conn.execute(
        "UPDATE runs SET paused = 1, status = ?, updated_at = ? WHERE run_id = ?",
        (status.value, op.at, op.run_id),
    )
    return dataclasses.replace(run, paused=True, status=status, updated_at=op.at)


def resume_run(conn: Conn, op: ops.ResumeRun) -> records.RunRecord:
    run = _load(conn, op.run_id)
    if run.is_terminal or not (run.paused or run.status is RunStatus.PAUSED):
        raise errors.InvalidOperation(
            f"run {op.run_id!r} is {run.status.value}, not paused",
            data={"run_id": op.run_id, "status": run.status.value},
        )
    status = run.status
    needs_resume = run.needs_resume
    if run.status is RunStatus.PAUSED and op.status is not ops.UNSET:
        status = op.status
        needs_resume = needs_resume or status is RunStatus.WAITING
    conn.execute(
        "UPDATE runs SET paused = 0, status = ?, needs_resume = ?, updated_at = ? "
        "WHERE run_id = ?",
        (status.value, int(needs_resume), op.at, op.run_id),
    )
    return dataclasses.replace(
        run, paused=False, status=status, needs_resume=needs_resume, updated_at=op.at
    )


def set_workflow_paused(conn: Conn, op: ops.SetWorkflowPaused) -> bool:
    if op.paused:
        cur = conn.execute(
            "INSERT OR IGNORE INTO paused_workflows (workflow_id, paused_at) VALUES (?, ?)",
            (op.workflow_id, op.at),
        )
    else:
        cur = conn.execute(
            "DELETE FROM paused_workflows WHERE workflow_id = ?", (op.workflow_id,)
        )
    return cur.rowcount == 1


# --- retry -------------------------------------------------------------------------------------


def retry_run(conn: Conn, op: ops.RetryRun) -> ops.RunRetried:
    if op.mode not in ("resume", "retrigger"):
        raise errors.InvalidOperation(f"unknown retry mode {op.mode!r}", data={"mode": op.mode})
    retried: list[records.RunRecord] = []
    _retry(conn, op.run_id, op.mode, op.at, retried)
    return ops.RunRetried(tuple(retried))


def _retry(
    conn: Conn, run_id: str, mode: str, at: float, out: list[records.RunRecord]
) -> None:
    run = _load(conn, run_id)
    if not run.is_terminal or run.status is RunStatus.COMPLETED:
        raise errors.InvalidOperation(
            f"run {run_id!r} is {run.status.value}: only a run that ended without completing "
            "can be retried",
            data={"run_id": run_id, "status": run.status.value},
        )
    children: list[str] = []
    if mode == "retrigger":
        journal = _take_everything(conn, run)
        attempt, started_at = run.attempt + 1, None
    else:
        journal = _reopen(conn, run, at, children)
        # The start time stays: ctx.now() replays from it.
        attempt, started_at = run.attempt, run.started_at
    seq = conn.execute(
        "SELECT coalesce(max(seq), 0) + 1 FROM run_archive WHERE run_id = ?", (run_id,)
    ).fetchone()[0]
    conn.execute(
        f"INSERT INTO run_archive ({rows.ARCHIVE_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (run_id, seq, run.attempt, mode, at, run.status.value, dumps(run.output),
         dumps(run.error), run.started_at, run.finished_at, dumps(journal) or "{}"),
    )
    conn.execute(
        "UPDATE runs SET status = 'pending', attempt = ?, started_at = ?, finished_at = NULL, "
        "output = NULL, error = NULL, compute_seconds = 0, recoveries = 0, needs_resume = 0, "
        "diverged = 0, scheduled_at = NULL, expires_at = NULL, cancel_requested = NULL, "
        "paused = 0, admitted_at = NULL, updated_at = ? WHERE run_id = ?",
        (attempt, started_at, at, run_id),
    )
    out.append(_load(conn, run_id))
    for child_id in children:
        _retry(conn, child_id, "resume", at, out)


_STEP_FIELDS = ("step_id", "position", "attempt", "status", "output", "error", "started_at",
                "finished_at", "runtime", "retry_at")
_ATTEMPT_FIELDS = ("step_id", "attempt", "status", "output", "error", "started_at",
                   "finished_at", "retry_at")
_JSON_FIELDS = frozenset({"output", "error", "meta", "match", "payload", "value", "chunk"})


def _as_dict(names: tuple[str, ...], row: rows.Row) -> dict[str, Any]:
    return {n: loads(v) if n in _JSON_FIELDS else v for n, v in zip(names, row, strict=True)}


def _take_step(conn: Conn, run_no: int, step_id: str) -> dict[str, Any] | None:
    """Take one step out of the journal (its latest attempt and its history)."""
    row = conn.execute(
        f"SELECT {', '.join(_STEP_FIELDS)} FROM steps WHERE run_no = ? AND step_id = ?",
        (run_no, step_id),
    ).fetchone()
    if row is None:
        return None
    step = _as_dict(_STEP_FIELDS, row)
    step["attempts"] = [
        _as_dict(_ATTEMPT_FIELDS, r)
        for r in conn.execute(
            f"SELECT {', '.join(_ATTEMPT_FIELDS)} FROM step_attempts WHERE run_no = ? "
            "AND step_id = ? ORDER BY attempt",
            (run_no, step_id),
        )
    ]
    conn.execute("DELETE FROM steps WHERE run_no = ? AND step_id = ?", (run_no, step_id))
    conn.execute("DELETE FROM step_attempts WHERE run_no = ? AND step_id = ?", (run_no, step_id))
    return step


_WP_FIELDS = ("wp_id", "kind", "status", "meta", "registered_at", "due_at", "timeout_at",
              "resolved_at", "payload", "error", "source", "matched_event_id")
_COMP_FIELDS = ("step_id", "status", "error", "finished_at")


def _take_everything(conn: Conn, run: records.RunRecord) -> dict[str, Any]:
    """``retrigger``: the whole journal goes to the archive; the run starts from nothing."""
    run_id, run_no = run.run_id, run.number
    step_ids = [r[0] for r in conn.execute(
        "SELECT step_id FROM steps WHERE run_no = ? ORDER BY position, step_id", (run_no,)
    )]
    steps = [s for s in (_take_step(conn, run_no, sid) for sid in step_ids) if s is not None]
    waitpoints = [
        _as_dict(_WP_FIELDS, r)
        for r in conn.execute(
            f"SELECT {', '.join(_WP_FIELDS)} FROM waitpoints WHERE run_id = ? "
            "ORDER BY registered_at, rowid",
            (run_id,),
        )
    ]
    compensations = [
        _as_dict(_COMP_FIELDS, r)
        for r in conn.execute(
            f"SELECT {', '.join(_COMP_FIELDS)} FROM compensations WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
    ]
    metadata = {k: loads(v) for k, v in conn.execute(
        "SELECT key, value FROM metadata WHERE run_id = ? ORDER BY key", (run_id,)
    )}
    chunks = [
        {"stream_id": r[0], "seq": r[1], "encoding": r[2], "chunk": loads(r[3]),
         "final": bool(r[4]), "at": r[5]}
        for r in conn.execute(
            "SELECT stream_id, seq, encoding, chunk, final, at FROM stream_chunks "
            "WHERE run_id = ? ORDER BY stream_id, seq",
            (run_id,),
        )
    ]
    # Tokens go with their waitpoints (foreign key); the new attempt reserves them again.
    conn.execute("DELETE FROM waitpoints WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM compensations WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM metadata WHERE run_id = ?", (run_id,))
    # The new attempt emits its metadata ops from index 0 again: they must apply.
    conn.execute("DELETE FROM metadata_cursor WHERE origin_run_id = ?", (run_id,))
    conn.execute("DELETE FROM stream_chunks WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM timers WHERE run_id = ?", (run_id,))
    return {"steps": steps, "waitpoints": waitpoints, "compensations": compensations,
            "metadata": metadata, "stream_chunks": chunks}


def _reopen(
    conn: Conn, run: records.RunRecord, at: float, children: list[str]
) -> dict[str, Any]:
    """``resume``: undo what ended the run, keep what still stands; return what was taken out.
    Children to retry with the run are appended to ``children``."""
    run_id, run_no = run.run_id, run.number
    compensations = [
        _as_dict(_COMP_FIELDS, r)
        for r in conn.execute(
            f"SELECT {', '.join(_COMP_FIELDS)} FROM compensations WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
    ]
    # A step whose compensation ran is undone: it runs again. One whose compensation failed
    # stays done, and its compensation may run again.
    undone = [
        step
        for comp in compensations
        if comp["status"] == records.CompensationStatus.COMPLETED.value
        for step in [_take_step(conn, run_no, comp["step_id"])]
        if step is not None
    ]
    conn.execute("DELETE FROM compensations WHERE run_id = ?", (run_id,))
    failed_steps = []
    for sid, step_id, attempt, error, finished_at in conn.execute(
        "SELECT id, step_id, attempt, error, finished_at FROM steps "
        "WHERE run_no = ? AND status = 'failed' AND retry_at IS NULL",
        (run_no,),
    ).fetchall():
        # The final failure becomes a failure with a backoff that is already over: the replay
        # passes the (resolved) backoff wait and runs the next attempt, numbered after it.
        conn.execute("UPDATE steps SET retry_at = ? WHERE id = ?", (at, sid))
        # Its registration is a journal entry (numbered); it is written resolved, so it has
        # no resolution entry of its own.
        seq = mutations.take_seq(conn, run_id)
        if conn.execute(
            "INSERT OR IGNORE INTO waitpoints (run_id, wp_id, kind, status, meta, "
            "registered_at, due_at, resolved_at, source, journal_seq) "
            "VALUES (?, ?, 'DATETIME', 'resolved', ?, ?, ?, ?, 'live', ?)",
            (run_id, f"retry:{step_id}:{attempt}",
             dumps({"step_id": step_id, "attempt": attempt}), finished_at or at, at, at, seq),
        ).rowcount != 1 and seq is not None:
            mutations.give_back_seq(conn, run_id)
        failed_steps.append({"step_id": step_id, "attempt": attempt, "error": loads(error)})
    reopened = _reopen_waits(conn, run_id, at, children)
    return {"failed_steps": failed_steps, "undone_steps": undone,
            "compensations": compensations, "reopened_waitpoints": reopened}


def _reopen_waits(conn: Conn, run_id: str, at: float, children: list[str]) -> list[str]:
    """Waits the run's end cancelled wait again (their timers re-armed at their own, absolute
    due times); a wait on a child that ended without completing waits for the child's retry."""
    reopened: list[str] = []
    found = conn.execute(
        f"SELECT {rows.WAITPOINT_COLUMNS} FROM waitpoints WHERE run_id = ? "
        "AND (status = 'cancelled' OR (kind = 'RUN' AND error IS NOT NULL)) "
        "ORDER BY registered_at, rowid",
        (run_id,),
    ).fetchall()
    for row in found:
        wp = rows.waitpoint_from_row(row)
        child = None
        if wp.kind is WaitpointKind.RUN:
            meta = wp.meta or {}
            if meta.get("detach") or not meta.get("child_run_id"):
                continue
            found_child = conn.execute(_SELECT_RUN, (meta["child_run_id"],)).fetchone()
            if found_child is None:  # refused before the child existed: the error stands
                continue
            child = rows.run_from_row(found_child)
            if wp.status is WaitpointStatus.RESOLVED and (
                not child.is_terminal or child.status is RunStatus.COMPLETED
            ):
                continue
        conn.execute(
            "UPDATE waitpoints SET status = 'waiting', resolved_at = NULL, payload = NULL, "
            "error = NULL, source = NULL, matched_event_id = NULL "
            "WHERE run_id = ? AND wp_id = ?",
            (run_id, wp.wp_id),
        )
        reopened.append(wp.wp_id)
        due = wp.due_at if wp.due_at is not None else wp.timeout_at
        if due is not None:
            kind = (TimerKind.RETRY if wp.wp_id.startswith("retry:")
                    else TimerKind.SLEEP if wp.due_at is not None else TimerKind.TIMEOUT)
            mutations.upsert_timer(conn, ops.UpsertTimer(
                f"wp:{run_id}:{wp.wp_id}", kind, due, at, run_id, wp.wp_id))
        if child is None or not child.is_terminal:
            continue
        if child.status is RunStatus.COMPLETED:
            mutations.resolve_waitpoint(conn, ops.ResolveWaitpoint(
                run_id, wp.wp_id, at, records.ResolutionSource.LIVE, payload=child.output))
        else:
            children.append(child.run_id)
    return reopened


APPLY: dict[type[Any], mutations.Apply] = {
    ops.RequestCancel: request_cancel,
    ops.RequestChildCancels: request_child_cancels,
    ops.RequestPause: request_pause,
    ops.ResumeRun: resume_run,
    ops.RetryRun: retry_run,
    ops.SetWorkflowPaused: set_workflow_paused,
}
"""Op type → the function that applies it (merged into the writer's table)."""
