"""Reading a database file read-only, beside a live daemon (``wf replay --check --db``).

The file is opened with ``mode=ro``: nothing is migrated, locked or written; under WAL a reader
sees the last committed state while the daemon goes on writing. A file of another schema
version is refused with a clear error (a check must read what this build understands).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from storage import errors, records
from storage.sqlite import rows, schema


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection; ``StorageError`` naming the file if it cannot be read."""
    file = Path(path)
    if not file.is_file():
        raise errors.StorageError(f"{file}: no such database file")
    conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = schema.user_version(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise errors.StorageError(f"{file}: not a wf database ({exc})") from exc
    if found != schema.latest_version():
        conn.close()
        raise errors.StorageError(
            f"{file}: schema version {found}, this build reads {schema.latest_version()} "
            "(start the daemon of this build once to migrate it, or check with the matching "
            "build)")
    return conn


def run_ids(conn: sqlite3.Connection, statuses: Sequence[str]) -> list[str]:
    """Run ids with one of ``statuses`` (all runs when empty), oldest first."""
    if statuses:
        marks = ", ".join("?" for _ in statuses)
        found = conn.execute(
            f"SELECT run_id FROM runs WHERE status IN ({marks}) ORDER BY number", tuple(statuses))
    else:
        found = conn.execute("SELECT run_id FROM runs ORDER BY number")
    return [r[0] for r in found]


def load_journal(conn: sqlite3.Connection, run_id: str) -> records.Journal:
    """What ``SQLiteStorage.load_journal`` returns, from a read-only connection."""
    key = (run_id,)
    conn.execute("BEGIN")  # one snapshot for every read below
    try:
        run = conn.execute(f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE run_id = ?",
                           key).fetchone()
        if run is None:
            raise errors.NotFound("run", run_id)
        steps = [rows.step_from_row(r) for r in conn.execute(
            f"SELECT {rows.STEP_COLUMNS} FROM steps s JOIN runs r ON r.number = s.run_no "
            "WHERE r.run_id = ? ORDER BY s.position, s.step_id", key)]
        attempts = [rows.attempt_from_row(r) for r in conn.execute(
            f"SELECT {rows.ATTEMPT_COLUMNS} FROM step_attempts a "
            "JOIN runs r ON r.number = a.run_no WHERE r.run_id = ?", key)]
        waitpoints = tuple(rows.waitpoint_from_row(r) for r in conn.execute(
            f"SELECT {rows.WAITPOINT_COLUMNS} FROM waitpoints WHERE run_id = ? "
            "ORDER BY registered_at, rowid", key))
        compensations = tuple(rows.compensation_from_row(r) for r in conn.execute(
            f"SELECT {rows.COMPENSATION_COLUMNS} FROM compensations WHERE run_id = ? "
            "ORDER BY seq", key))
        metadata = {k: rows.loads(v) for k, v in conn.execute(
            "SELECT key, value FROM metadata WHERE run_id = ? ORDER BY key", key)}
        cursor = conn.execute(
            "SELECT last_op_index FROM metadata_cursor WHERE origin_run_id = ?", key).fetchone()
        chunks = tuple(rows.chunk_from_row(r) for r in conn.execute(
            f"SELECT {rows.CHUNK_COLUMNS} FROM stream_chunks WHERE run_id = ? "
            "ORDER BY stream_id, seq", key))
        reopened = frozenset(
            step["step_id"]
            for (journal,) in conn.execute(
                "SELECT a.journal FROM run_archive a JOIN runs r ON r.run_id = a.run_id "
                "WHERE a.run_id = ? AND a.mode = 'resume' AND a.attempt = r.attempt", key)
            for step in (rows.loads(journal) or {}).get("undone_steps", ())
        )
    finally:
        conn.execute("COMMIT")
    attempts.extend(
        records.StepAttemptRecord(s.run_id, s.step_id, s.attempt, s.status, s.output, s.error,
                                  s.started_at, s.finished_at, s.retry_at, s.journal_seq)
        for s in steps
    )
    attempts.sort(key=lambda a: (a.step_id, a.attempt))
    return records.Journal(
        run=rows.run_from_row(run),
        steps=tuple(steps),
        attempts=tuple(attempts),
        waitpoints=waitpoints,
        compensations=compensations,
        metadata=metadata,
        stream_chunks=chunks,
        completed_streams=frozenset(c.stream_id for c in chunks if c.final),
        metadata_ops=cursor[0] + 1 if cursor else 0,
        reopened_steps=reopened,
    )


def journals(conn: sqlite3.Connection, statuses: Sequence[str]) -> Iterator[records.Journal]:
    for run_id in run_ids(conn, statuses):
        yield load_journal(conn, run_id)
