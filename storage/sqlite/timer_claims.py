"""The timer task's claim of every due timer, set-based (SQLite).

One ``ClaimDueTimers`` fires up to ``limit`` timers in one transaction. Fired one by one
(``mutations.fire_timer``) a sleep's timer took seven statements and ~55 µs of writer CPU: its
row read, its delete, the waitpoint's resolution, the waitpoint's other timers, the run's
journal number, the resolution's number, the waitpoint read back. Here each of those is one
statement for the whole batch. The outcome is the same row for row: timers fire in due order,
a waitpoint is resolved once (by its first due timer) and a run's resolutions take its next
journal numbers in that order. PostgreSQL keeps the op-by-op form (``postgres/claims.py``:
its rows are locked ``SKIP LOCKED`` and its VALUES lists would need casts).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from storage import ops, records
from storage.records import ResolutionSource, TimerKind
from storage.sqlite import rows
from storage.sqlite.mutations import SCHEDULE_LEASE

Pair = tuple[str, str]  # (run_id, wp_id)

# Rows per statement: 3 parameters each, far below SQLite's 32,766 variables.
_CHUNK = 500
_KEPT = (TimerKind.SCHEDULE, TimerKind.BATCH)

_DUE = (f"SELECT {rows.TIMER_COLUMNS} FROM timers WHERE due_at <= ? "
        "ORDER BY due_at, timer_id LIMIT ?")


def _values(width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return ", ".join([row] * count)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


def claim_due_timers(conn: sqlite3.Connection, op: ops.ClaimDueTimers
                     ) -> tuple[ops.FiredTimer, ...]:
    timers = [rows.timer_from_row(r) for r in conn.execute(_DUE, (op.before, op.limit))]
    if not timers:
        return ()
    kept = [t for t in timers if t.kind in _KEPT]
    if kept:
        # Kept, a lease later: the fire itself (FireSchedule, FlushBatch) moves it to the next
        # due time in the transaction that records the fire; if that never commits, it fires
        # again.
        conn.executemany("UPDATE timers SET due_at = ? WHERE timer_id = ?",
                         [(op.before + SCHEDULE_LEASE, t.timer_id) for t in kept])
    gone = [t.timer_id for t in timers if t.kind not in _KEPT]
    for chunk in _chunks(gone):
        conn.execute(f"DELETE FROM timers WHERE timer_id IN ({', '.join('?' * len(chunk))})",
                     chunk)
    # A waitpoint is resolved by the first of its timers that fires (in due order).
    sources: dict[Pair, ResolutionSource] = {}
    for t in timers:
        if t.kind not in _KEPT and t.run_id is not None and t.wp_id is not None:
            sources.setdefault((t.run_id, t.wp_id), ResolutionSource.TIMEOUT
                               if t.kind is TimerKind.TIMEOUT else ResolutionSource.LIVE)
    resolved = _resolve(conn, sources, op.before) if sources else {}
    fired: list[ops.FiredTimer] = []
    taken: set[Pair] = set()
    for t in timers:
        waitpoint = None
        if t.kind not in _KEPT and t.run_id is not None and t.wp_id is not None:
            pair = (t.run_id, t.wp_id)
            if pair in taken:
                continue  # the resolution deleted this timer before it could fire (as op by op)
            waitpoint = resolved.get(pair)
            if waitpoint is not None:
                taken.add(pair)
        fired.append(ops.FiredTimer(t, waitpoint))
    return tuple(fired)


_RESOLVE = (
    "UPDATE waitpoints SET status = 'resolved', resolved_at = ?, payload = NULL, error = NULL, "
    "source = v.v_source, matched_event_id = NULL "
    "FROM (SELECT column1 AS v_run, column2 AS v_wp, column3 AS v_source FROM (VALUES {})) AS v "
    "WHERE run_id = v.v_run AND wp_id = v.v_wp AND status = 'waiting' RETURNING run_id, wp_id"
)
_TAKE_SEQS = (
    "UPDATE runs SET needs_resume = 1, journal_seq = journal_seq + v.v_count "
    "FROM (SELECT column1 AS v_run, column2 AS v_count FROM (VALUES {})) AS v "
    "WHERE run_id = v.v_run RETURNING run_id, journal_seq"
)
_SET_SEQS = (
    "UPDATE waitpoints SET resolved_journal_seq = v.v_seq "
    "FROM (SELECT column1 AS v_run, column2 AS v_wp, column3 AS v_seq FROM (VALUES {})) AS v "
    f"WHERE run_id = v.v_run AND wp_id = v.v_wp RETURNING {rows.WAITPOINT_COLUMNS}"
)
_SELECT_WAITPOINT = (
    f"SELECT {rows.WAITPOINT_COLUMNS} FROM waitpoints WHERE run_id = ? AND wp_id = ?"
)


def _resolve(conn: sqlite3.Connection, sources: dict[Pair, ResolutionSource], at: float
             ) -> dict[Pair, records.WaitpointRecord]:
    """Resolve the still-waiting waitpoints among ``sources`` (in order); their records."""
    order = {pair: i for i, pair in enumerate(sources)}
    done: list[Pair] = []
    items = list(sources.items())
    for chunk in _chunks(items):
        params: list[Any] = [at]
        for (run_id, wp_id), source in chunk:
            params += (run_id, wp_id, source.value)
        done += [(r[0], r[1]) for r in
                 conn.execute(_RESOLVE.format(_values(3, len(chunk))), params)]
    if not done:
        return {}
    done.sort(key=order.__getitem__)  # RETURNING's order is not the VALUES order
    # Recovery restarts waiting runs with this flag: a resolution is never stranded by a crash
    # between its commit and its delivery to the run's actor.
    conn.executemany("DELETE FROM timers WHERE run_id = ? AND wp_id = ?", done)
    # Each resolution is a journal entry: a run's resolutions take its next numbers in order.
    by_run: dict[str, list[Pair]] = {}
    for pair in done:
        by_run.setdefault(pair[0], []).append(pair)
    last: dict[str, int] = {}
    runs = list(by_run.items())
    for chunk in _chunks(runs):
        params = [x for run_id, pairs in chunk for x in (run_id, len(pairs))]
        last.update((r[0], r[1]) for r in
                    conn.execute(_TAKE_SEQS.format(_values(2, len(chunk))), params))
    seqs: list[tuple[str, str, int]] = []
    for run_id, pairs in by_run.items():
        if run_id in last:
            first = last[run_id] - len(pairs) + 1
            seqs += ((r, w, first + i) for i, (r, w) in enumerate(pairs))
    out: dict[Pair, records.WaitpointRecord] = {}
    for chunk in _chunks(seqs):
        params = [x for row in chunk for x in row]
        for r in conn.execute(_SET_SEQS.format(_values(3, len(chunk))), params):
            wp = rows.waitpoint_from_row(r)
            out[(wp.run_id, wp.wp_id)] = wp
    for pair in done:  # a run without its row (never expected): read as it stands
        if pair not in out:
            out[pair] = rows.waitpoint_from_row(conn.execute(_SELECT_WAITPOINT, pair).fetchone())
    return out
