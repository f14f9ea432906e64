"""How each write op changes the database. Runs on the writer thread, inside its transaction.

Every function takes the writer's ``sqlite3.Connection`` and one op, and returns the op's result.
They never commit or roll back: the writer wraps each caller's ops in a savepoint and the whole
batch in one transaction. Errors raised here fail only the caller whose op raised them, unless
they are I/O-level (see ``translate.is_batch_fatal``).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from functools import cache
from typing import Any

from storage import errors, ops, records
from storage.records import JSON, ResolutionSource, TimerKind, WaitpointKind, WaitpointStatus
from storage.sqlite import rows
from storage.sqlite.rows import dumps

Conn = sqlite3.Connection

_WAITING = WaitpointStatus.WAITING.value
SCHEDULE_LEASE = 10.0
"""Seconds after a schedule's timer fired before it fires again if the fire was not recorded."""

# --- runs --------------------------------------------------------------------------------------

_SELECT_RUN = f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE run_id = ?"
_SELECT_RUN_BY_KEY = (
    f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE workflow_id = ? AND idempotency_key = ?"
)
_INSERT_RUN = (
    "INSERT INTO runs (run_id, workflow_id, workflow_version, status, input, tags, priority, "
    "idempotency_key, parent_run_id, root_run_id, triggered_by, created_at, scheduled_at, "
    "updated_at, parent_wp_id, flow, throttle_key, expires_at, error, finished_at, "
    "version_pinned, traceparent) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def create_run(conn: Conn, op: ops.CreateRun) -> ops.RunCreated:
    row = conn.execute(_SELECT_RUN, (op.run_id,)).fetchone()
    if row is None and op.idempotency_key is not None:
        row = conn.execute(_SELECT_RUN_BY_KEY, (op.workflow_id, op.idempotency_key)).fetchone()
    if row is not None:
        return ops.RunCreated(rows.run_from_row(row), created=False)
    tags = tuple(dict.fromkeys(op.tags))
    cur = conn.execute(
        _INSERT_RUN,
        (
            op.run_id,
            op.workflow_id,
            op.workflow_version,
            op.status.value,
            dumps(op.input),
            dumps(list(tags)),
            op.priority,
            op.idempotency_key,
            op.parent_run_id,
            op.root_run_id,
            op.triggered_by,
            op.created_at,
            op.scheduled_at,
            op.created_at,
            op.parent_wp_id,
            dumps(op.flow),
            op.throttle_key,
            op.expires_at,
            dumps(op.error),
            op.finished_at,
            int(op.version_pinned),
            op.traceparent,
        ),
    )
    if tags:
        conn.executemany(
            "INSERT INTO run_tags (run_id, tag, created_at) VALUES (?, ?, ?)",
            [(op.run_id, tag, op.created_at) for tag in tags],
        )
    if op.status is records.RunStatus.PENDING:
        _start_timers(conn, op.run_id, op.created_at, op.scheduled_at, op.expires_at)
        if op.cancel_on:
            conn.executemany(
                "INSERT OR REPLACE INTO run_cancel_on (run_id, rule, event_type, wildcard, "
                "match, compensate) VALUES (?, ?, ?, ?, ?, ?)",
                [(op.run_id, i, r.event_type, int(r.wildcard), dumps(r.match), int(r.compensate))
                 for i, r in enumerate(op.cancel_on)],
            )
    run = records.RunRecord(
        run_id=op.run_id,
        number=int(cur.lastrowid or 0),
        workflow_id=op.workflow_id,
        workflow_version=op.workflow_version,
        status=op.status,
        input=rows.loads(dumps(op.input)),
        output=None,
        error=rows.loads(dumps(op.error)),
        tags=tags,
        priority=op.priority,
        idempotency_key=op.idempotency_key,
        parent_run_id=op.parent_run_id,
        root_run_id=op.root_run_id,
        triggered_by=op.triggered_by,
        attempt=1,
        created_at=op.created_at,
        scheduled_at=op.scheduled_at,
        started_at=None,
        finished_at=op.finished_at,
        updated_at=op.created_at,
        diverged=False,
        recoveries=0,
        compute_seconds=0.0,
        parent_wp_id=op.parent_wp_id,
        flow=rows.loads(dumps(op.flow)),
        throttle_key=op.throttle_key,
        expires_at=op.expires_at,
        version_pinned=op.version_pinned,
        traceparent=op.traceparent,
    )
    return ops.RunCreated(run, created=True)


def _start_timers(
    conn: Conn, run_id: str, at: float, scheduled_at: float | None, expires_at: float | None
) -> None:
    """(Re)place a pending run's ``start`` and ``expire`` timers."""
    for kind, due in ((TimerKind.START, scheduled_at), (TimerKind.EXPIRE, expires_at)):
        timer_id = f"{kind.value}:{run_id}"
        if due is None:
            conn.execute("DELETE FROM timers WHERE timer_id = ?", (timer_id,))
        else:
            _upsert_timer(conn, timer_id, kind, due, at, run_id, None, None)


def _close_run(conn: Conn, run_id: str) -> None:
    """The run ended: nothing of it is due any more, and nothing may resolve its waits (a
    later event must not count a cancelled run as resolved)."""
    conn.execute("DELETE FROM timers WHERE run_id = ?", (run_id,))
    conn.execute(
        "UPDATE waitpoints SET status = 'cancelled' WHERE run_id = ? AND status = 'waiting'",
        (run_id,),
    )
    conn.execute("DELETE FROM run_cancel_on WHERE run_id = ?", (run_id,))


def end_pending(conn: Conn, op: ops.EndPending) -> records.RunRecord | None:
    cur = conn.execute(
        "UPDATE runs SET status = ?, error = ?, finished_at = ?, updated_at = ?, paused = 0, "
        "owner = NULL WHERE run_id = ? AND status = 'pending' AND started_at IS NULL",
        (op.status.value, dumps(op.error), op.at, op.at, op.run_id),
    )
    if cur.rowcount == 0:
        return None
    _close_run(conn, op.run_id)
    run = rows.run_from_row(conn.execute(_SELECT_RUN, (op.run_id,)).fetchone())
    if run.parent_run_id is not None and run.parent_wp_id is not None:
        # The parent waits on this child: it never ran, but it ended (a child that ends by
        # its actor resolves this in the transaction of its end, likewise).
        resolve_waitpoint(conn, ops.ResolveWaitpoint(
            run.parent_run_id, run.parent_wp_id, op.at, ResolutionSource.LIVE,
            error=op.parent_error or {"code": "CANCELLED", "status": run.status.value,
                                      "child_run_id": run.run_id},
            child_run_id=run.run_id))
    return run


def reschedule_pending(conn: Conn, op: ops.ReschedulePending) -> records.RunRecord:
    row = conn.execute(_SELECT_RUN, (op.run_id,)).fetchone()
    if row is None:
        raise errors.NotFound("run", op.run_id)
    run = rows.run_from_row(row)
    if run.status is not records.RunStatus.PENDING or run.started_at is not None:
        raise errors.InvalidOperation(
            f"run {op.run_id!r} is {run.status.value}, not a pending run that has not started",
            data={"run_id": op.run_id, "status": run.status.value},
        )
    expires_at = run.expires_at if op.expires_at is ops.UNSET else op.expires_at
    new_input = run.input if op.input is ops.UNSET else op.input
    # Many daemons: a run moved to a later start is nobody's until then (whoever fires its
    # start timer drives it); one driven nowhere yet loses nothing by this.
    owner = "owner = NULL, " if op.scheduled_at is not None else ""
    conn.execute(
        f"UPDATE runs SET {owner}scheduled_at = ?, expires_at = ?, input = ?, updated_at = ? "
        "WHERE run_id = ?",
        (op.scheduled_at, expires_at, dumps(new_input), op.at, op.run_id),
    )
    _start_timers(conn, op.run_id, op.at, op.scheduled_at, expires_at)
    return dataclasses.replace(
        run, scheduled_at=op.scheduled_at, expires_at=expires_at,
        input=rows.loads(dumps(new_input)), updated_at=op.at,
    )


_UPDATE_FIELDS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("status", lambda v: v.value),
    ("output", dumps),
    ("error", dumps),
    ("started_at", lambda v: v),
    ("finished_at", lambda v: v),
    ("attempt", lambda v: v),
    ("diverged", int),
    ("recoveries", lambda v: v),
    ("priority", lambda v: v),
)


def update_run(conn: Conn, op: ops.UpdateRun) -> None:
    sets = ["updated_at = ?"]
    params: list[Any] = [op.at]
    for name, encode in _UPDATE_FIELDS:
        value = getattr(op, name)
        if value is not ops.UNSET:
            sets.append(f"{name} = ?")
            params.append(encode(value))
    if op.status is records.RunStatus.RUNNING:
        sets.append("needs_resume = 0")
    elif op.status is not ops.UNSET and op.status in records.TERMINAL_STATUSES:
        # An ended run is no longer paused (a cancelled paused run), nor anybody's: the owner
        # index holds live runs only, and a dead daemon's rescue releases only those.
        sets.append("paused = 0, owner = NULL")
    if op.add_compute_seconds:
        sets.append("compute_seconds = compute_seconds + ?")
        params.append(op.add_compute_seconds)
    params.append(op.run_id)
    cur = conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id = ?", params)
    if cur.rowcount == 0:
        raise errors.NotFound("run", op.run_id)
    if op.status is not ops.UNSET and op.status in records.TERMINAL_STATUSES:
        _close_run(conn, op.run_id)


# Casts that give every VALUES column of ``update_runs`` its type on PostgreSQL (parameters in
# a VALUES list would otherwise be text); SQLite takes the same names as affinities.
_UPDATE_CASTS = {"status": "TEXT", "output": "TEXT", "error": "TEXT",
                 "started_at": "DOUBLE PRECISION", "finished_at": "DOUBLE PRECISION",
                 "attempt": "INTEGER", "diverged": "INTEGER", "recoveries": "INTEGER",
                 "priority": "INTEGER"}
_RunShape = tuple[tuple[str, ...], str, bool]  # fields set, status class, adds compute


def _shape(op: ops.UpdateRun) -> _RunShape:
    fields = tuple(name for name, _ in _UPDATE_FIELDS if getattr(op, name) is not ops.UNSET)
    status = ("" if op.status is ops.UNSET else "running" if op.status is records.RunStatus.RUNNING
              else "terminal" if op.status in records.TERMINAL_STATUSES else "other")
    return fields, status, bool(op.add_compute_seconds)


@cache
def _update_runs_sql(shape: _RunShape, rows_count: int) -> str:
    fields, status, adds = shape
    names = ["rid", "v_at", *(f"v_{f}" for f in fields)] + (["v_add"] if adds else [])
    casts = ["?", "CAST(? AS DOUBLE PRECISION)",
             *(f"CAST(? AS {_UPDATE_CASTS[f]})" for f in fields)]
    if adds:
        casts.append("CAST(? AS DOUBLE PRECISION)")
    sets = ["updated_at = c.v_at", *(f"{f} = c.v_{f}" for f in fields)]
    if status == "running":
        sets.append("needs_resume = 0")
    elif status == "terminal":
        sets.append("paused = 0, owner = NULL")
    if adds:
        sets.append("compute_seconds = compute_seconds + c.v_add")
    values = ", ".join([f"({', '.join(casts)})"] * rows_count)
    return (f"WITH c({', '.join(names)}) AS (VALUES {values}) "
            f"UPDATE runs SET {', '.join(sets)} FROM c WHERE run_id = c.rid RETURNING run_id")


def update_runs(conn: Conn, updates: list[ops.UpdateRun]) -> None:
    """``update_run`` for many runs, one each (the PostgreSQL writer's set-based path): one
    statement per chunk of ops that set the same fields, and the ended runs closed together.
    Raises ``NotCoalesced`` if a run is missing (the writer then applies op by op)."""
    by_shape: dict[_RunShape, list[ops.UpdateRun]] = {}
    for op in updates:
        by_shape.setdefault(_shape(op), []).append(op)
    ended: list[str] = []
    for shape, group in by_shape.items():
        fields, status, adds = shape
        encoders = [encode for name, encode in _UPDATE_FIELDS if name in fields]
        params: list[Any] = []
        for op in group:
            params += (op.run_id, op.at,
                       *(enc(getattr(op, f)) for f, enc in zip(fields, encoders, strict=True)))
            if adds:
                params.append(op.add_compute_seconds)
        width = len(params) // len(group)
        done = 0
        for chunk in _chunks(len(group)):
            found = conn.execute(_update_runs_sql(shape, chunk),
                                 params[done * width : (done + chunk) * width]).fetchall()
            done += chunk
            if len(found) != chunk:
                raise NotCoalesced("a run to update does not exist")
        if status == "terminal":
            ended += (op.run_id for op in group)
    done = 0
    for chunk in _chunks(len(ended)):
        part = ended[done : done + chunk]
        done += chunk
        marks = ", ".join(["?"] * chunk)
        # _close_run for all of them at once.
        conn.execute(f"DELETE FROM timers WHERE run_id IN ({marks})", part)
        conn.execute(f"UPDATE waitpoints SET status = 'cancelled' WHERE status = 'waiting' "
                     f"AND run_id IN ({marks})", part)
        conn.execute(f"DELETE FROM run_cancel_on WHERE run_id IN ({marks})", part)


def create_child_run(conn: Conn, op: ops.CreateChildRun) -> ops.ChildRunCreated:
    created = create_run(conn, op.child)
    waitpoint = None if op.invoke is None else register_waitpoint(conn, op.invoke).waitpoint
    return ops.ChildRunCreated(created.run, created.created, waitpoint)


# --- journal -----------------------------------------------------------------------------------

# Journal numbers (SPEC §3): every entry takes its run's next ``journal_seq`` in the op that
# writes it (migration 0013 dropped the triggers that did it). The run's row is updated first,
# taking the number: on PostgreSQL that row lock orders two writers of one run's journal (the
# owner's step and another daemon's resolution), so no number is handed out twice. An op
# whose write turns out to add no entry (a conflict) gives its number back in the same
# transaction, under the same lock: numbers stay dense, as the triggers left them.
_TAKE_SEQ = "UPDATE runs SET journal_seq = journal_seq + 1 WHERE run_id = ? RETURNING journal_seq"
_GIVE_BACK_SEQ = "UPDATE runs SET journal_seq = journal_seq - 1 WHERE run_id = ?"


def take_seq(conn: Conn, run_id: str) -> int | None:
    """The run's next journal number, taken; None if there is no such run."""
    # fetchall: a RETURNING statement left unfinished would hold the transaction open.
    found = conn.execute(_TAKE_SEQ, (run_id,)).fetchall()
    return int(found[0][0]) if found else None


def give_back_seq(conn: Conn, run_id: str) -> None:
    """Return the number ``take_seq`` took last: the write it was for added no entry."""
    conn.execute(_GIVE_BACK_SEQ, (run_id,))


_RUN_NO = "(SELECT number FROM runs WHERE run_id = ?)"
_STEP_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# A row inserted, or a later attempt replacing an earlier one, is a new journal entry and
# keeps the number given with it; the same attempt again keeps the row's number (and then the
# returned number is not the one given: the caller gives it back).
_UPSERT_STEP_TAIL = (
    " ON CONFLICT (run_no, step_id) DO UPDATE SET position = excluded.position, "
    "attempt = excluded.attempt, status = excluded.status, output = excluded.output, "
    "error = excluded.error, started_at = excluded.started_at, "
    "finished_at = excluded.finished_at, runtime = excluded.runtime, "
    "retry_at = excluded.retry_at, journal_seq = CASE WHEN excluded.attempt > steps.attempt "
    "THEN excluded.journal_seq ELSE steps.journal_seq END "
    "WHERE excluded.attempt >= steps.attempt RETURNING journal_seq"
)
_INSERT_STEP_HEAD = (
    "INSERT INTO steps (run_no, step_id, position, attempt, status, output, error, started_at, "
    "finished_at, runtime, retry_at, journal_seq) VALUES "
)
UPSERT_STEP = _INSERT_STEP_HEAD + _STEP_VALUES + _UPSERT_STEP_TAIL
STEP_CHUNKS = (256, 64, 16, 4, 1)
"""Row counts of the multi-row statements the coalesced step path uses (each cached once;
256 rows x 12 parameters stays below both backends' parameter limits)."""


@cache
def insert_steps_sql(rows_count: int) -> str:
    """First attempts for ``rows_count`` rows in one statement: SQLite runs it in one call, so
    the writer thread gives up and re-takes the GIL once per chunk, not once per row. A row
    already there is left alone (and the statement's row count says so)."""
    return (_INSERT_STEP_HEAD + ", ".join([_STEP_VALUES] * rows_count)
            + " ON CONFLICT (run_no, step_id) DO NOTHING")


@cache
def take_seqs_sql(runs_count: int) -> str:
    """Take ``n`` journal numbers for each of ``runs_count`` runs in one statement; returns
    each run's id, number and last number taken. The same text serves both backends."""
    values = ", ".join(["(?, CAST(? AS INTEGER))"] * runs_count)
    return (f"WITH c(rid, n) AS (VALUES {values}) "
            "UPDATE runs SET journal_seq = journal_seq + c.n FROM c WHERE run_id = c.rid "
            "RETURNING run_id, number, journal_seq")


class NotCoalesced(Exception):
    """The coalesced step rows cannot be written as one: a run is missing or a row was
    already there. The writer applies the batch again, op by op."""


def record_first_attempts(conn: Conn, steps: list[ops.RecordStepAttempt]) -> None:
    """First attempts of steps, many callers' at once (the writer's hot path): one statement
    per chunk of runs takes each run's numbers, one per chunk of rows writes them. Raises
    ``NotCoalesced`` if that would not give exactly what the ops one by one would."""
    wanted: dict[str, int] = {}
    for op in steps:
        wanted[op.run_id] = wanted.get(op.run_id, 0) + 1
    runs: dict[str, list[int]] = {}  # run_id -> [number, next journal number to give]
    pairs = list(wanted.items())
    for chunk in _chunks(len(pairs)):
        part, pairs = pairs[:chunk], pairs[chunk:]
        for run_id, number, last in conn.execute(
            take_seqs_sql(chunk), [v for pair in part for v in pair]
        ).fetchall():
            runs[run_id] = [number, last - wanted[run_id] + 1]
    if len(runs) != len(wanted):
        raise NotCoalesced("a step's run does not exist")
    params: list[Any] = []
    for op in steps:
        run = runs[op.run_id]
        seq = run[1]
        run[1] = seq + 1
        params += (run[0], op.step_id, op.position, op.attempt, op.status.value,
                   dumps(op.output), dumps(op.error), op.started_at, op.finished_at,
                   op.runtime, op.retry_at, seq)
    done = 0
    for chunk in _chunks(len(steps)):
        cur = conn.execute(insert_steps_sql(chunk), params[done * 12 : (done + chunk) * 12])
        done += chunk
        if cur.rowcount != chunk:  # a row was there: the op would replace it, unnumbered
            raise NotCoalesced("a step row was already recorded")


def _chunks(total: int) -> list[int]:
    out: list[int] = []
    for size in STEP_CHUNKS:
        while total >= size:
            out.append(size)
            total -= size
    return out


_ARCHIVE_EARLIER_ATTEMPT = (
    "INSERT OR REPLACE INTO step_attempts (run_no, step_id, attempt, status, output, error, "
    "started_at, finished_at, retry_at, journal_seq) SELECT run_no, step_id, attempt, status, "
    "output, error, started_at, finished_at, retry_at, journal_seq FROM steps "
    "WHERE run_no = ? AND step_id = ? AND attempt < ?"
)
_TAKE_STEP_SEQ = (
    "UPDATE runs SET journal_seq = journal_seq + 1 WHERE run_id = ? RETURNING number, journal_seq"
)


def record_step_attempt(conn: Conn, op: ops.RecordStepAttempt) -> None:
    taken = conn.execute(_TAKE_STEP_SEQ, (op.run_id,)).fetchall()
    if not taken:
        raise errors.NotFound("run", op.run_id)
    run_no, seq = taken[0]
    if op.attempt > 1:
        conn.execute(_ARCHIVE_EARLIER_ATTEMPT, (run_no, op.step_id, op.attempt))
    written = conn.execute(UPSERT_STEP, (
        run_no, op.step_id, op.position, op.attempt, op.status.value, dumps(op.output),
        dumps(op.error), op.started_at, op.finished_at, op.runtime, op.retry_at, seq,
    )).fetchall()
    if not written or written[0][0] != seq:  # the same attempt again, or an older one
        give_back_seq(conn, op.run_id)


def record_compensation(conn: Conn, op: ops.RecordCompensation) -> None:
    seq = take_seq(conn, op.run_id)
    written = conn.execute(
        "INSERT INTO compensations (run_id, step_id, seq, status, error, finished_at, "
        "journal_seq) "
        "VALUES (?, ?, (SELECT count(*) FROM compensations WHERE run_id = ?), ?, ?, ?, ?) "
        "ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, "
        "error = excluded.error, finished_at = excluded.finished_at RETURNING journal_seq",
        (op.run_id, op.step_id, op.run_id, op.status.value, dumps(op.error), op.finished_at,
         seq),
    ).fetchall()
    if seq is not None and written[0][0] != seq:  # updated, not a new entry
        give_back_seq(conn, op.run_id)


def append_stream_chunk(conn: Conn, op: ops.AppendStreamChunk) -> bool:
    seq = take_seq(conn, op.run_id)
    cur = conn.execute(
        "INSERT OR IGNORE INTO stream_chunks (run_id, stream_id, seq, encoding, chunk, final, at, "
        "journal_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (op.run_id, op.stream_id, op.seq, op.encoding, dumps(op.chunk), int(op.final), op.at,
         seq),
    )
    if cur.rowcount != 1 and seq is not None:
        give_back_seq(conn, op.run_id)
    return cur.rowcount == 1


def apply_metadata(conn: Conn, op: ops.ApplyMetadata) -> bool:
    row = conn.execute(
        "SELECT last_op_index FROM metadata_cursor WHERE origin_run_id = ?", (op.origin_run_id,)
    ).fetchone()
    if row is not None and op.op_index <= row[0]:
        return False
    kind = records.MetadataOpKind(op.op)
    if kind is records.MetadataOpKind.REMOVE:
        conn.execute("DELETE FROM metadata WHERE run_id = ? AND key = ?", (op.run_id, op.key))
    else:
        value = op.value
        if kind is not records.MetadataOpKind.SET:
            current_row = conn.execute(
                "SELECT value FROM metadata WHERE run_id = ? AND key = ?", (op.run_id, op.key)
            ).fetchone()
            current = None if current_row is None else rows.loads(current_row[0])
            value = _combine(kind, op.key, current, op.value)
        conn.execute(
            "INSERT INTO metadata (run_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
            (op.run_id, op.key, dumps(value)),
        )
    conn.execute(
        "INSERT INTO metadata_cursor (origin_run_id, last_op_index) VALUES (?, ?) "
        "ON CONFLICT (origin_run_id) DO UPDATE SET last_op_index = excluded.last_op_index",
        (op.origin_run_id, op.op_index),
    )
    return True


def _combine(kind: records.MetadataOpKind, key: str, current: JSON, value: JSON) -> JSON:
    if kind is records.MetadataOpKind.INCREMENT:
        step = 1 if value is None else value
        base = 0 if current is None else current
        if not _is_number(step) or not _is_number(base):
            raise errors.InvalidOperation(
                f"metadata increment of {key!r}: needs numbers, got {base!r} + {step!r}"
            )
        return base + step
    base_list = [] if current is None else current
    if not isinstance(base_list, list):
        raise errors.InvalidOperation(
            f"metadata append to {key!r}: stored value {current!r} is not a list"
        )
    return [*base_list, value]


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# --- waitpoints ----------------------------------------------------------------------------------

_SELECT_WAITPOINT = (
    f"SELECT {rows.WAITPOINT_COLUMNS} FROM waitpoints WHERE run_id = ? AND wp_id = ?"
)
_INSERT_WAITPOINT = (
    "INSERT INTO waitpoints (run_id, wp_id, kind, status, meta, event_type, signal_name, match, "
    "token_id, registered_at, due_at, timeout_at, journal_seq) "
    "VALUES (?, ?, ?, 'waiting', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RESOLVE = (
    "UPDATE waitpoints SET status = 'resolved', resolved_at = ?, payload = ?, error = ?, "
    "source = ?, matched_event_id = ? WHERE run_id = ? AND wp_id = ? AND status = 'waiting'"
)


_RESUME_AND_TAKE_SEQ = (
    "UPDATE runs SET needs_resume = 1, journal_seq = journal_seq + 1 WHERE run_id = ? "
    "RETURNING journal_seq"
)
_SET_RESOLVED_SEQ = "UPDATE waitpoints SET resolved_journal_seq = ? WHERE run_id = ? AND wp_id = ?"


def _resolve(
    conn: Conn,
    run_id: str,
    wp_id: str,
    resolved_at: float,
    source: ResolutionSource,
    payload: JSON,
    error: JSON,
    matched_event_id: str | None,
) -> bool:
    cur = conn.execute(
        _RESOLVE,
        (resolved_at, dumps(payload), dumps(error), source.value, matched_event_id, run_id, wp_id),
    )
    if cur.rowcount == 0:
        return False
    conn.execute("DELETE FROM timers WHERE run_id = ? AND wp_id = ?", (run_id, wp_id))
    # Recovery restarts waiting runs with this flag: a resolution is never stranded by a crash
    # between its commit and its delivery to the run's actor. The resolution is a journal
    # entry: it takes the run's next number in the same statement.
    taken = conn.execute(_RESUME_AND_TAKE_SEQ, (run_id,)).fetchall()
    if taken:
        conn.execute(_SET_RESOLVED_SEQ, (taken[0][0], run_id, wp_id))
    return True


def _resolved(
    wp: records.WaitpointRecord,
    resolved_at: float,
    source: ResolutionSource,
    payload: JSON,
    error: JSON = None,
    matched_event_id: str | None = None,
) -> records.WaitpointRecord:
    return dataclasses.replace(
        wp,
        status=WaitpointStatus.RESOLVED,
        resolved_at=resolved_at,
        payload=payload,
        error=error,
        source=source,
        matched_event_id=matched_event_id,
    )


def register_waitpoint(conn: Conn, op: ops.RegisterWaitpoint) -> ops.WaitpointRegistered:
    row = conn.execute(_SELECT_WAITPOINT, (op.run_id, op.wp_id)).fetchone()
    if row is not None:
        return ops.WaitpointRegistered(rows.waitpoint_from_row(row), created=False)
    seq = take_seq(conn, op.run_id)
    conn.execute(
        _INSERT_WAITPOINT,
        (
            op.run_id,
            op.wp_id,
            op.kind.value,
            dumps(op.meta),
            op.event_type,
            op.signal_name,
            dumps(op.match),
            op.token_id,
            op.registered_at,
            op.due_at,
            op.timeout_at,
            seq,
        ),
    )
    if op.token_id is not None:
        _reserve_token(conn, op)
    due = op.due_at if op.due_at is not None else op.timeout_at
    if due is not None:
        kind = op.timer_kind or (TimerKind.SLEEP if op.due_at is not None else TimerKind.TIMEOUT)
        _upsert_timer(
            conn,
            f"wp:{op.run_id}:{op.wp_id}",
            kind,
            due,
            op.registered_at,
            op.run_id,
            op.wp_id,
            op.timer_payload,
        )
    wp = rows.waitpoint_from_row(conn.execute(_SELECT_WAITPOINT, (op.run_id, op.wp_id)).fetchone())
    if op.kind is WaitpointKind.SIGNAL:
        wp = _take_from_inbox(conn, op, wp)
    elif op.kind is WaitpointKind.EVENT and op.lookback_from is not None:
        wp = _take_from_lookback(conn, op, wp)
    return ops.WaitpointRegistered(wp, created=True)


def _reserve_token(conn: Conn, op: ops.RegisterWaitpoint) -> None:
    assert op.token_id is not None
    held = conn.execute(
        "SELECT run_id, wp_id FROM tokens WHERE token_id = ?", (op.token_id,)
    ).fetchone()
    if held is not None:
        raise errors.TokenConflict(op.token_id, f"is already held by {held[0]}/{held[1]}")
    conn.execute(
        "INSERT INTO tokens (token_id, run_id, wp_id, created_at) VALUES (?, ?, ?, ?)",
        (op.token_id, op.run_id, op.wp_id, op.registered_at),
    )


def _take_from_inbox(
    conn: Conn, op: ops.RegisterWaitpoint, wp: records.WaitpointRecord
) -> records.WaitpointRecord:
    row = conn.execute(
        "SELECT seq, payload FROM signal_inbox WHERE run_id = ? AND name = ? ORDER BY seq LIMIT 1",
        (op.run_id, op.signal_name),
    ).fetchone()
    if row is None:
        return wp
    conn.execute("DELETE FROM signal_inbox WHERE seq = ?", (row[0],))
    payload = rows.loads(row[1])
    _resolve(
        conn, op.run_id, op.wp_id, op.registered_at, ResolutionSource.INBOX, payload, None, None
    )
    return _resolved(wp, op.registered_at, ResolutionSource.INBOX, payload)


def _take_from_lookback(
    conn: Conn, op: ops.RegisterWaitpoint, wp: records.WaitpointRecord
) -> records.WaitpointRecord:
    candidates = conn.execute(
        "SELECT event_id, payload FROM events WHERE type = ? AND received_at >= ? "
        "AND event_id NOT IN (SELECT matched_event_id FROM waitpoints "
        "WHERE run_id = ? AND matched_event_id IS NOT NULL) ORDER BY received_at, event_id",
        (op.event_type, op.lookback_from, op.run_id),
    )
    for event_id, text in candidates:
        payload = rows.loads(text)
        if op.match is None or (op.matches is not None and op.matches(op.match, payload)):
            _resolve(
                conn,
                op.run_id,
                op.wp_id,
                op.registered_at,
                ResolutionSource.INBOX,
                payload,
                None,
                event_id,
            )
            return _resolved(
                wp, op.registered_at, ResolutionSource.INBOX, payload, matched_event_id=event_id
            )
    return wp


def resolve_waitpoint(conn: Conn, op: ops.ResolveWaitpoint) -> bool:
    if op.child_run_id is not None and conn.execute(
        "SELECT 1 FROM waitpoints WHERE run_id = ? AND wp_id = ? "
        "AND json_extract(meta, '$.child_run_id') = ?",
        (op.run_id, op.wp_id, op.child_run_id),
    ).fetchone() is None:
        return False
    return _resolve(
        conn,
        op.run_id,
        op.wp_id,
        op.resolved_at,
        op.source,
        op.payload,
        op.error,
        op.matched_event_id,
    )


def record_event(conn: Conn, op: ops.RecordEvent) -> ops.EventRecorded:
    payload_text = dumps(op.payload)
    cur = conn.execute(
        "INSERT OR IGNORE INTO events (event_id, type, payload, received_at) VALUES (?, ?, ?, ?)",
        (op.event_id, op.type, payload_text, op.received_at),
    )
    if cur.rowcount == 0:
        return ops.EventRecorded(inserted=False, resolved=())
    # Cancel rules first: an event never cancels the runs it starts itself.
    cancel = _cancel_matches(conn, op) if op.cancel else ()
    started = tuple(r.run for r in map(lambda c: create_run(conn, c), op.start) if r.created)
    batched = tuple(_add_to_batch(conn, op, item, payload_text) for item in op.batch)
    waiting = conn.execute(
        f"SELECT {rows.WAITPOINT_COLUMNS} FROM waitpoints "
        "WHERE event_type = ? AND status = 'waiting' ORDER BY registered_at, rowid",
        (op.type,),
    ).fetchall()
    resolved: list[records.WaitpointRecord] = []
    for row in waiting:
        wp = rows.waitpoint_from_row(row)
        if wp.kind is not WaitpointKind.EVENT:
            continue
        if wp.match is not None and not op.matches(wp.match, op.payload):
            continue
        _resolve(
            conn,
            wp.run_id,
            wp.wp_id,
            op.received_at,
            ResolutionSource.LIVE,
            op.payload,
            None,
            op.event_id,
        )
        resolved.append(
            _resolved(
                wp, op.received_at, ResolutionSource.LIVE, op.payload, matched_event_id=op.event_id
            )
        )
    return ops.EventRecorded(
        inserted=True, resolved=tuple(resolved), started=started, batched=batched, cancel=cancel
    )


def _add_to_batch(
    conn: Conn, op: ops.RecordEvent, item: ops.BatchItem, payload_text: str | None
) -> tuple[str, str, int]:
    conn.execute(
        "INSERT OR IGNORE INTO event_batches (workflow_id, batch_key, event_id, payload, "
        "received_at) VALUES (?, ?, ?, ?, ?)",
        (item.workflow_id, item.batch_key, op.event_id, payload_text, op.received_at),
    )
    (count,) = conn.execute(
        "SELECT count(*) FROM event_batches WHERE workflow_id = ? AND batch_key = ?",
        (item.workflow_id, item.batch_key),
    ).fetchone()
    if count == 1:
        _upsert_timer(conn, ops.batch_timer_id(item.workflow_id, item.batch_key), TimerKind.BATCH,
                      op.received_at + item.timeout, op.received_at, None, None,
                      [item.workflow_id, item.batch_key])
    return (item.workflow_id, item.batch_key, int(count))


def _cancel_matches(conn: Conn, op: ops.RecordEvent) -> tuple[ops.CancelMatch, ...]:
    found = conn.execute(
        "SELECT run_id, match, compensate FROM run_cancel_on WHERE event_type = ? AND wildcard = 0 "
        "UNION ALL SELECT run_id, match, compensate FROM run_cancel_on WHERE wildcard = 1 "
        "AND substr(?, 1, length(event_type)) = event_type",
        (op.type, op.type),
    ).fetchall()
    out: dict[str, ops.CancelMatch] = {}
    reason = f"cancelled by event {op.type!r} ({op.event_id})"
    for run_id, match_text, compensate in found:
        match = rows.loads(match_text)
        if run_id in out or not (match is None or op.matches(match, op.payload)):
            continue
        # The cancel is stored with the event (SPEC §4: in its transaction): a crash before the
        # runs are told loses nothing, recovery carries the request out.
        request = {"reason": reason, "compensate": bool(compensate), "code": "CANCELLED",
                   "at": op.received_at}
        conn.execute(
            "UPDATE runs SET cancel_requested = ?, updated_at = ? WHERE run_id = ? "
            "AND cancel_requested IS NULL",
            (dumps(request), op.received_at, run_id),
        )
        row = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
        out[run_id] = ops.CancelMatch(run_id, bool(compensate), rows.run_from_row(row))
    return tuple(out.values())


def flush_batch(conn: Conn, op: ops.FlushBatch) -> ops.RunCreated:
    created = create_run(conn, op.run)
    if created.created:
        conn.executemany(
            "DELETE FROM event_batches WHERE workflow_id = ? AND batch_key = ? AND event_id = ?",
            [(op.workflow_id, op.batch_key, e) for e in op.event_ids],
        )
    first = conn.execute(
        "SELECT received_at FROM event_batches WHERE workflow_id = ? AND batch_key = ? "
        "ORDER BY received_at, event_id LIMIT 1",
        (op.workflow_id, op.batch_key),
    ).fetchone()
    timer_id = ops.batch_timer_id(op.workflow_id, op.batch_key)
    if first is None:
        conn.execute("DELETE FROM timers WHERE timer_id = ?", (timer_id,))
    else:
        _upsert_timer(conn, timer_id, TimerKind.BATCH, first[0] + op.timeout, op.run.created_at,
                      None, None, [op.workflow_id, op.batch_key])
    return created


def send_signal(conn: Conn, op: ops.SendSignal) -> ops.SignalSent:
    if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (op.run_id,)).fetchone() is None:
        raise errors.NotFound("run", op.run_id)
    row = conn.execute(
        f"SELECT {rows.WAITPOINT_COLUMNS} FROM waitpoints WHERE run_id = ? AND signal_name = ? "
        "AND status = 'waiting' ORDER BY registered_at, rowid LIMIT 1",
        (op.run_id, op.name),
    ).fetchone()
    if row is not None:
        wp = rows.waitpoint_from_row(row)
        _resolve(
            conn, wp.run_id, wp.wp_id, op.sent_at, ResolutionSource.LIVE, op.payload, None, None
        )
        return ops.SignalSent(True, _resolved(wp, op.sent_at, ResolutionSource.LIVE, op.payload))
    conn.execute(
        "INSERT INTO signal_inbox (run_id, name, payload, sent_at) VALUES (?, ?, ?, ?)",
        (op.run_id, op.name, dumps(op.payload), op.sent_at),
    )
    return ops.SignalSent(False, None)


def complete_token(conn: Conn, op: ops.CompleteToken) -> records.WaitpointRecord:
    held = conn.execute(
        "SELECT run_id, wp_id FROM tokens WHERE token_id = ?", (op.token_id,)
    ).fetchone()
    if held is None:
        raise errors.NotFound("token", op.token_id)
    run_id, wp_id = held
    if not _resolve(
        conn, run_id, wp_id, op.completed_at, ResolutionSource.LIVE, op.payload, None, None
    ):
        raise errors.TokenConflict(op.token_id)
    row = conn.execute(_SELECT_WAITPOINT, (run_id, wp_id)).fetchone()
    return rows.waitpoint_from_row(row)


# --- timers, schedules, rate limits ------------------------------------------------------------

_UPSERT_TIMER = (
    "INSERT INTO timers (timer_id, kind, due_at, run_id, wp_id, payload, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (timer_id) DO UPDATE SET kind = excluded.kind, "
    "due_at = excluded.due_at, run_id = excluded.run_id, wp_id = excluded.wp_id, "
    "payload = excluded.payload"
)


def _upsert_timer(
    conn: Conn,
    timer_id: str,
    kind: TimerKind,
    due_at: float,
    created_at: float,
    run_id: str | None,
    wp_id: str | None,
    payload: JSON,
) -> None:
    conn.execute(
        _UPSERT_TIMER, (timer_id, kind.value, due_at, run_id, wp_id, dumps(payload), created_at)
    )


def upsert_timer(conn: Conn, op: ops.UpsertTimer) -> None:
    _upsert_timer(
        conn, op.timer_id, op.kind, op.due_at, op.created_at, op.run_id, op.wp_id, op.payload
    )


def delete_timer(conn: Conn, op: ops.DeleteTimer) -> bool:
    return conn.execute("DELETE FROM timers WHERE timer_id = ?", (op.timer_id,)).rowcount == 1


def fire_timer(conn: Conn, op: ops.FireTimer) -> ops.FiredTimer | None:
    row = conn.execute(
        f"SELECT {rows.TIMER_COLUMNS} FROM timers WHERE timer_id = ?", (op.timer_id,)
    ).fetchone()
    if row is None:
        return None
    timer = rows.timer_from_row(row)
    if timer.due_at > op.fired_at:
        return None
    if timer.kind in (TimerKind.SCHEDULE, TimerKind.BATCH):
        # Kept, a lease later: the fire itself (FireSchedule, FlushBatch) moves it to the next
        # due time in the transaction that records the fire; if that never commits, it fires
        # again.
        conn.execute("UPDATE timers SET due_at = ? WHERE timer_id = ?",
                     (op.fired_at + SCHEDULE_LEASE, op.timer_id))
        return ops.FiredTimer(timer, None)
    conn.execute("DELETE FROM timers WHERE timer_id = ?", (op.timer_id,))
    waitpoint = None
    if timer.run_id is not None and timer.wp_id is not None:
        source = (
            ResolutionSource.TIMEOUT if timer.kind is TimerKind.TIMEOUT else (ResolutionSource.LIVE)
        )
        if _resolve(conn, timer.run_id, timer.wp_id, op.fired_at, source, None, None, None):
            wp_row = conn.execute(_SELECT_WAITPOINT, (timer.run_id, timer.wp_id)).fetchone()
            waitpoint = rows.waitpoint_from_row(wp_row)
    return ops.FiredTimer(timer, waitpoint)


def put_rate_limit(conn: Conn, op: ops.PutRateLimit) -> None:
    conn.execute(
        "INSERT INTO rate_limits (key, tokens, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, "
        "updated_at = excluded.updated_at",
        (op.key, op.tokens, op.updated_at),
    )


Apply = Callable[[Conn, Any], Any]

APPLY: dict[type[Any], Apply] = {
    ops.CreateRun: create_run,
    ops.UpdateRun: update_run,
    ops.ReschedulePending: reschedule_pending,
    ops.EndPending: end_pending,
    ops.FlushBatch: flush_batch,
    ops.CreateChildRun: create_child_run,
    ops.RecordStepAttempt: record_step_attempt,
    ops.RecordCompensation: record_compensation,
    ops.AppendStreamChunk: append_stream_chunk,
    ops.ApplyMetadata: apply_metadata,
    ops.RegisterWaitpoint: register_waitpoint,
    ops.ResolveWaitpoint: resolve_waitpoint,
    ops.RecordEvent: record_event,
    ops.SendSignal: send_signal,
    ops.CompleteToken: complete_token,
    ops.UpsertTimer: upsert_timer,
    ops.DeleteTimer: delete_timer,
    ops.FireTimer: fire_timer,
    ops.PutRateLimit: put_rate_limit,
}
"""Op type → the function that applies it (schedules' ops: ``storage.sqlite.schedules``)."""
