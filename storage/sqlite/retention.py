"""Retention (SPEC §12): deleting ended runs with every row they own, old events, and giving
free pages back to the file system.

Each op deletes a small batch so one writer transaction stays a few milliseconds long (a
``PruneRuns`` with a budget stops between trees once its time is spent); the caller (the
engine's retention sweep or ``prune``) loops until a batch comes back empty or short.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from storage import errors, ops, records
from storage.sqlite import mutations

Conn = sqlite3.Connection

_TERMINAL = tuple(sorted(s.value for s in records.TERMINAL_STATUSES))

# Every table that holds rows of a run, keyed by run id (most cascade from runs too; deleting
# them explicitly keeps pruning correct whatever the foreign-key setting and documents the set).
# steps/step_attempts are keyed by the run's number; tokens hang off waitpoints; the FTS row
# goes with the runs row (trigger run_search_delete).
_BY_RUN_ID = (
    ("tokens", "run_id"),
    ("waitpoints", "run_id"),
    ("signal_inbox", "run_id"),
    ("timers", "run_id"),
    ("stream_chunks", "run_id"),
    ("metadata", "run_id"),
    ("metadata_cursor", "origin_run_id"),
    ("compensations", "run_id"),
    ("run_cancel_on", "run_id"),
    ("run_archive", "run_id"),
    ("run_amendments", "run_id"),
    ("run_tags", "run_id"),
    ("run_groups", "run_id"),
)
_BY_RUN_NO = ("step_attempts", "steps")


def _check_statuses(statuses: tuple[records.RunStatus, ...]) -> list[str]:
    values = [records.RunStatus(s).value for s in statuses]
    live = [v for v in values if v not in _TERMINAL]
    if live:
        raise errors.InvalidOperation(
            f"prune: only ended runs can be pruned, not status {live[0]!r}"
        )
    return values


def prunable_roots_sql(
    statuses: tuple[records.RunStatus, ...], before: float, workflow_id: str | None
) -> tuple[str, list[Any]]:
    """Root runs that may go: ended before ``before`` with every descendant ended. Driven by
    runs_status_created (created_at <= finished_at, so the created bound is implied)."""
    values = _check_statuses(statuses)
    marks = ", ".join("?" * len(values))
    terminal = ", ".join("?" * len(_TERMINAL))
    sql = (
        f"SELECT r.run_id FROM runs r WHERE r.status IN ({marks}) AND r.created_at < ? "
        "AND r.finished_at < ? AND r.parent_run_id IS NULL"
    )
    params: list[Any] = [*values, before, before]
    if workflow_id is not None:
        sql += " AND r.workflow_id = ?"
        params.append(workflow_id)
    sql += (
        " AND NOT EXISTS (SELECT 1 FROM runs c WHERE c.root_run_id = r.run_id "
        f"AND c.status NOT IN ({terminal}))"
    )
    params.extend(_TERMINAL)
    return sql, params


def count_prunable_sql(
    statuses: tuple[records.RunStatus, ...], before: float, workflow_id: str | None
) -> tuple[str, list[Any]]:
    """How many runs (roots and their descendants) ``PruneRuns`` would delete with no limit."""
    roots, params = prunable_roots_sql(statuses, before, workflow_id)
    sql = (
        f"SELECT (SELECT count(*) FROM ({roots}) AS roots) "  # PostgreSQL < 16 needs the alias
        f"+ (SELECT count(*) FROM runs c WHERE c.root_run_id IN ({roots}))"
    )
    return sql, [*params, *params]


# Trees deleted together between two looks at the clock of a budgeted PruneRuns: small enough
# that one group stays well under a millisecond of deletes, large enough to share statements.
_TREES_PER_GROUP = 4


def prune_runs(conn: Conn, op: ops.PruneRuns) -> tuple[str, ...]:
    started = time.perf_counter()
    roots, params = prunable_roots_sql(op.statuses, op.before, op.workflow_id)
    picked = conn.execute(f"{roots} ORDER BY r.created_at LIMIT ?", [*params, op.limit]).fetchall()
    if not picked:
        return ()
    root_ids = [str(r[0]) for r in picked]
    group = len(root_ids) if op.budget is None else _TREES_PER_GROUP
    gone: list[str] = []
    for i in range(0, len(root_ids), group):
        if i and op.budget is not None and time.perf_counter() - started >= op.budget:
            break  # the rest stays for the next op: the writer serves others in between
        gone.extend(_delete_trees(conn, root_ids[i : i + group]))
    return tuple(gone)


def _delete_trees(conn: Conn, root_ids: list[str]) -> list[str]:
    marks = ", ".join("?" * len(root_ids))
    found = conn.execute(
        f"SELECT run_id, number FROM runs WHERE run_id IN ({marks}) OR root_run_id IN ({marks})",
        [*root_ids, *root_ids],
    ).fetchall()
    run_ids = [str(r[0]) for r in found]
    numbers = [int(r[1]) for r in found]
    delete_runs(conn, run_ids, numbers)
    return run_ids


def delete_runs(conn: Conn, run_ids: list[str], numbers: list[int]) -> None:
    """Delete the runs and every row they own (in chunks under SQLite's variable limit)."""
    step = 200  # well under SQLite's default limit of 32766 variables
    for i in range(0, len(run_ids), step):
        ids = run_ids[i : i + step]
        nos = numbers[i : i + step]
        id_marks = ", ".join("?" * len(ids))
        no_marks = ", ".join("?" * len(nos))
        for table, column in _BY_RUN_ID:
            conn.execute(f"DELETE FROM {table} WHERE {column} IN ({id_marks})", ids)
        for table in _BY_RUN_NO:
            conn.execute(f"DELETE FROM {table} WHERE run_no IN ({no_marks})", nos)
        conn.execute(f"DELETE FROM runs WHERE run_id IN ({id_marks})", ids)


def prune_events(conn: Conn, op: ops.PruneEvents) -> int:
    cur = conn.execute(
        "DELETE FROM events WHERE event_id IN (SELECT event_id FROM events "
        "WHERE received_at < ? ORDER BY received_at LIMIT ?)",
        (op.before, op.limit),
    )
    return cur.rowcount


def incremental_vacuum(conn: Conn, op: ops.IncrementalVacuum) -> int:
    # Python's sqlite3 steps a row-less pragma once, and each step frees one page: so one
    # statement per page (microseconds each), stopping early when the free list is empty.
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:  # not INCREMENTAL
        return free
    for _ in range(min(free, op.pages)):
        conn.execute("PRAGMA incremental_vacuum")
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def merge_search_index(conn: Conn, op: ops.MergeSearchIndex) -> bool:
    # A negative budget merges segments whatever their level (FTS5 'merge' command); a change
    # count below 2 means there was nothing left to merge (FTS5 documentation).
    before = conn.total_changes
    conn.execute("INSERT INTO run_search(run_search, rank) VALUES('merge', ?)", (-op.pages,))
    return conn.total_changes - before >= 2


APPLY: dict[type[Any], mutations.Apply] = {
    ops.PruneRuns: prune_runs,
    ops.PruneEvents: prune_events,
    ops.IncrementalVacuum: incremental_vacuum,
    ops.MergeSearchIndex: merge_search_index,
}
"""Retention op type → the function that applies it (merged into the writer's table)."""
