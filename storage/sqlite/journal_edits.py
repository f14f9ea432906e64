"""Operator edits of journals (SPEC §14): ``fork`` (a new run with a copy of another's journal
up to a point) and ``amend`` (one frontier step's recorded result replaced in place, with an
append-only audit row). Runs on the writer thread, inside its transaction, like
:mod:`storage.sqlite.interventions`. Plain SQL only: a PostgreSQL backend twins it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from storage import errors, ops, records
from storage.records import RunStatus
from storage.sqlite import mutations, rows
from storage.sqlite.rows import dumps, loads

Conn = sqlite3.Connection

_SELECT_RUN = f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE run_id = ?"
_MAX_LATER = 20


def _load(conn: Conn, run_id: str) -> records.RunRecord:
    row = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
    if row is None:
        raise errors.NotFound("run", run_id)
    return rows.run_from_row(row)


# --- fork --------------------------------------------------------------------------------------

_STEP_COPY = ("step_id", "position", "attempt", "status", "output", "error", "started_at",
              "finished_at", "runtime", "retry_at", "journal_seq")
_ATTEMPT_COPY = ("step_id", "attempt", "status", "output", "error", "started_at", "finished_at",
                 "retry_at", "journal_seq")
_WP_COPY = ("wp_id", "kind", "status", "meta", "event_type", "signal_name", "match", "token_id",
            "registered_at", "due_at", "timeout_at", "resolved_at", "payload", "error", "source",
            "matched_event_id", "journal_seq", "resolved_journal_seq")
_CHUNK_COPY = ("stream_id", "seq", "encoding", "chunk", "final", "at", "journal_seq")


def _kept(attempt: dict[str, Any], cut: float) -> bool:
    seq = attempt["journal_seq"]
    return seq is not None and seq < cut and attempt["status"] != "running"


def fork_run(conn: Conn, op: ops.ForkRun) -> records.RunRecord:
    source = _load(conn, op.source_run_id)
    if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (op.run.run_id,)).fetchone():
        raise errors.InvalidOperation(
            f"run id {op.run.run_id!r} is taken", data={"run_id": op.run.run_id})
    created = mutations.create_run(conn, op.run).run
    conn.execute("UPDATE runs SET forked_from = ? WHERE run_id = ?",
                 (dumps(op.forked_from), created.run_id))
    cut = float("inf") if op.before_seq is None else op.before_seq
    # (old seq, how to set the copy's new seq): renumbered 1, 2, ... in the original order.
    numbering: list[tuple[int, str, tuple[Any, ...]]] = []
    _copy_steps(conn, source.number, created, cut, numbering)
    _copy_waitpoints(conn, source.run_id, created.run_id, cut, op.renames, numbering)
    for row in conn.execute(
        f"SELECT {', '.join(_CHUNK_COPY)} FROM stream_chunks WHERE run_id = ? "
        "AND journal_seq < ? ORDER BY stream_id, seq",
        (source.run_id, cut),
    ).fetchall():
        conn.execute(
            "INSERT INTO stream_chunks (run_id, stream_id, seq, encoding, chunk, final, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (created.run_id, *row[:6]),
        )
        numbering.append((row[6], "UPDATE stream_chunks SET journal_seq = ? WHERE run_id = ? "
                          "AND stream_id = ? AND seq = ?", (created.run_id, row[0], row[1])))
    numbering.sort(key=lambda item: item[0])
    for new_seq, (_old, sql, key) in enumerate(numbering, start=1):
        conn.execute(sql, (new_seq, *key))
    # A run with a history replays it: it starts where the original started (ctx.now() replays
    # from there, and a run with no start time is taken for one with nothing recorded).
    conn.execute("UPDATE runs SET journal_seq = ?, started_at = ? WHERE run_id = ?",
                 (len(numbering), source.started_at if numbering else None, created.run_id))
    return _load(conn, created.run_id)


def _copy_steps(
    conn: Conn, source_no: int, created: records.RunRecord, cut: float,
    numbering: list[tuple[int, str, tuple[Any, ...]]],
) -> None:
    history: dict[str, list[dict[str, Any]]] = {}
    positions: dict[str, tuple[int, str | None]] = {}
    for row in conn.execute(
        f"SELECT {', '.join(_ATTEMPT_COPY)} FROM step_attempts WHERE run_no = ? "
        "ORDER BY step_id, attempt",
        (source_no,),
    ).fetchall():
        history.setdefault(row[0], []).append(dict(zip(_ATTEMPT_COPY, row, strict=True)))
    for row in conn.execute(
        f"SELECT {', '.join(_STEP_COPY)} FROM steps WHERE run_no = ? ORDER BY journal_seq",
        (source_no,),
    ).fetchall():
        step = dict(zip(_STEP_COPY, row, strict=True))
        positions[step["step_id"]] = (step["position"], step["runtime"])
        history.setdefault(step["step_id"], []).append(
            {k: step[k] for k in _ATTEMPT_COPY})
    for step_id, attempts in history.items():
        kept = [a for a in sorted(attempts, key=lambda a: a["attempt"]) if _kept(a, cut)]
        # A history ending in a final failure is left out whole: the fork runs the step again.
        if not kept or (kept[-1]["status"] == "failed" and kept[-1]["retry_at"] is None):
            continue
        position, runtime = positions.get(step_id, (0, None))
        *earlier, latest = kept
        cur = conn.execute(
            "INSERT INTO steps (run_no, step_id, position, attempt, status, output, error, "
            "started_at, finished_at, runtime, retry_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (created.number, step_id, position, latest["attempt"], latest["status"],
             latest["output"], latest["error"], latest["started_at"], latest["finished_at"],
             runtime, latest["retry_at"]),
        )
        numbering.append((latest["journal_seq"], "UPDATE steps SET journal_seq = ? WHERE id = ?",
                          (cur.lastrowid,)))
        for a in earlier:
            conn.execute(
                "INSERT INTO step_attempts (run_no, step_id, attempt, status, output, error, "
                "started_at, finished_at, retry_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (created.number, step_id, a["attempt"], a["status"], a["output"], a["error"],
                 a["started_at"], a["finished_at"], a["retry_at"]),
            )
            numbering.append((a["journal_seq"], "UPDATE step_attempts SET journal_seq = ? "
                              "WHERE run_no = ? AND step_id = ? AND attempt = ?",
                              (created.number, step_id, a["attempt"])))


def _copy_waitpoints(
    conn: Conn, source_id: str, new_id: str, cut: float,
    renames: tuple[tuple[str, str, str], ...],
    numbering: list[tuple[int, str, tuple[Any, ...]]],
) -> None:
    renamed = {old: (wp_id, token_id) for old, wp_id, token_id in renames}
    for row in conn.execute(
        f"SELECT {', '.join(_WP_COPY)} FROM waitpoints WHERE run_id = ? AND status = 'resolved' "
        "AND resolved_journal_seq < ? ORDER BY journal_seq",
        (source_id, cut),
    ).fetchall():
        wp = dict(zip(_WP_COPY, row, strict=True))
        if wp["wp_id"] in renamed:
            wp["wp_id"], wp["token_id"] = renamed[wp["wp_id"]]
            meta = loads(wp["meta"])
            if isinstance(meta, dict) and "token_id" in meta:
                wp["meta"] = dumps({**meta, "token_id": wp["token_id"]})
        columns = _WP_COPY[:-2]
        conn.execute(
            f"INSERT INTO waitpoints (run_id, {', '.join(columns)}) "
            f"VALUES (?, {', '.join('?' for _ in columns)})",
            (new_id, *(wp[c] for c in columns)),
        )
        key = (new_id, wp["wp_id"])
        numbering.append((wp["journal_seq"], "UPDATE waitpoints SET journal_seq = ? "
                          "WHERE run_id = ? AND wp_id = ?", key))
        numbering.append((wp["resolved_journal_seq"], "UPDATE waitpoints SET "
                          "resolved_journal_seq = ? WHERE run_id = ? AND wp_id = ?", key))


# --- amend -------------------------------------------------------------------------------------

_NOT_AMENDABLE = frozenset({RunStatus.RUNNING, RunStatus.PENDING, RunStatus.COMPLETED})


def amend_step(conn: Conn, op: ops.AmendStep) -> ops.RunAmended:
    run = _load(conn, op.run_id)
    if run.status in _NOT_AMENDABLE:
        raise errors.InvalidOperation(
            f"run {op.run_id!r} is {run.status.value}: only a run that is not running (failed, "
            "waiting in a step's backoff, paused or held) can be amended",
            data={"code": "RUN_NOT_ACTIVE", "run_id": op.run_id, "status": run.status.value},
        )
    row = conn.execute(
        "SELECT id, attempt, status, output, error, journal_seq FROM steps "
        "WHERE run_no = ? AND step_id = ?",
        (run.number, op.step_id),
    ).fetchone()
    if row is None:
        raise errors.NotFound("step", op.step_id)
    step_row_id, attempt, status, output, error, step_seq = row
    backoff = f"retry:{op.step_id}:"
    later = _later_entries(conn, run, step_seq or 0, backoff)
    if later:
        raise errors.InvalidOperation(
            f"step {op.step_id!r} is not the frontier of run {op.run_id!r}: "
            f"{len(later)} later journal entr{'y' if len(later) == 1 else 'ies'} "
            f"({', '.join(e['type'] + ' ' + e['id'] for e in later[:3])}"
            f"{', ...' if len(later) > 3 else ''}); fork the run instead",
            data={"code": "NOT_FRONTIER", "run_id": op.run_id, "step_id": op.step_id,
                  "later": later[:_MAX_LATER]},
        )
    old = {"status": status, "attempt": attempt, "output": loads(output), "error": loads(error)}
    new = {"status": "completed", "output": op.output}
    conn.execute(
        "UPDATE steps SET status = 'completed', output = ?, error = NULL, retry_at = NULL "
        "WHERE id = ?",
        (dumps(op.output), step_row_id),
    )
    # The step's pending backoff goes: the body never waits for it now.
    waiting = [wp for (wp,) in conn.execute(
        "SELECT wp_id FROM waitpoints WHERE run_id = ? AND status = 'waiting' "
        "AND substr(wp_id, 1, ?) = ?",
        (op.run_id, len(backoff), backoff),
    ).fetchall()]
    for wp_id in waiting:
        conn.execute("DELETE FROM timers WHERE run_id = ? AND wp_id = ?", (op.run_id, wp_id))
        conn.execute("DELETE FROM waitpoints WHERE run_id = ? AND wp_id = ?", (op.run_id, wp_id))
    woken = bool(waiting) and run.status is RunStatus.WAITING
    conn.execute(
        "UPDATE runs SET needs_resume = CASE WHEN ? THEN 1 ELSE needs_resume END, "
        "updated_at = ? WHERE run_id = ?",
        (int(woken), op.at, op.run_id),
    )
    seq = conn.execute(
        "SELECT coalesce(max(seq), 0) + 1 FROM run_amendments WHERE run_id = ?", (op.run_id,)
    ).fetchone()[0]
    conn.execute(
        f"INSERT INTO run_amendments ({rows.AMENDMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (op.run_id, seq, op.step_id, op.at, op.peer_uid, op.reason, dumps(old), dumps(new)),
    )
    amendment = records.AmendmentRecord(op.run_id, seq, op.step_id, op.at, op.peer_uid,
                                        op.reason, old, new)
    return ops.RunAmended(_load(conn, op.run_id), amendment, woken)


def _later_entries(
    conn: Conn, run: records.RunRecord, after: int, backoff: str
) -> list[dict[str, Any]]:
    """Journal entries of ``run`` numbered after ``after``, except the ``backoff`` waits."""
    found = conn.execute(
        "SELECT 'step', step_id, journal_seq FROM steps WHERE run_no = ? AND journal_seq > ? "
        "UNION ALL SELECT 'step', step_id, journal_seq FROM step_attempts "
        "WHERE run_no = ? AND journal_seq > ? "
        "UNION ALL SELECT 'waitpoint', wp_id, journal_seq FROM waitpoints "
        "WHERE run_id = ? AND journal_seq > ? AND substr(wp_id, 1, ?) <> ? "
        "UNION ALL SELECT 'resolution', wp_id, resolved_journal_seq FROM waitpoints "
        "WHERE run_id = ? AND resolved_journal_seq > ? AND substr(wp_id, 1, ?) <> ? "
        "UNION ALL SELECT 'compensation', step_id, journal_seq FROM compensations "
        "WHERE run_id = ? AND journal_seq > ? "
        "UNION ALL SELECT 'stream', stream_id, journal_seq FROM stream_chunks "
        "WHERE run_id = ? AND journal_seq > ? "
        "ORDER BY 3",
        (run.number, after, run.number, after,
         run.run_id, after, len(backoff), backoff,
         run.run_id, after, len(backoff), backoff,
         run.run_id, after, run.run_id, after),
    ).fetchall()
    return [{"type": kind, "id": ref, "seq": seq} for kind, ref, seq in found]


APPLY: dict[type[Any], mutations.Apply] = {
    ops.ForkRun: fork_run,
    ops.AmendStep: amend_step,
}
"""Op type → the function that applies it (merged into the writer's table)."""
