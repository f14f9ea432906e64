"""The daemon registry and leases (SPEC §13), one definition for both backends.

Every time here is the *database's* clock (``DB_NOW``), never a daemon's: two daemons on two
machines agree on whose lease has run out because one clock judges both. PostgreSQL runs the
same SQL through ``storage.postgres.dialect``, which turns ``DB_NOW`` into ``now()``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from storage import ops, records
from storage.sqlite import rows
from storage.sqlite.rows import Row

# The database clock in epoch seconds (SQLite: millisecond precision). The dialect adapter
# rewrites this exact text for PostgreSQL, so keep it verbatim.
DB_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

DAEMON_COLUMNS = (
    "d.daemon_id, d.name, d.host, d.pid, d.version, d.socket, d.http, d.started_at, "
    "d.renewed_at, d.lease_until"
)
LIST_DAEMONS = (
    f"SELECT {DAEMON_COLUMNS}, d.lease_until > {DB_NOW}, "
    "(SELECT count(*) FROM runs r WHERE r.owner = d.daemon_id), "
    f"{DB_NOW} FROM daemons d ORDER BY d.started_at, d.daemon_id"
)


def register_daemon(conn: sqlite3.Connection, op: ops.RegisterDaemon) -> float:
    if op.lease <= 0:
        raise ValueError(f"daemon lease must be positive seconds, got {op.lease!r}")
    row = conn.execute(
        "INSERT INTO daemons (daemon_id, name, host, pid, version, socket, http, started_at, "
        f"renewed_at, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, {DB_NOW}, {DB_NOW}, "
        f"{DB_NOW} + ?) RETURNING lease_until",
        (op.daemon_id, op.name, op.host, op.pid, op.version, op.socket, op.http, op.lease),
    ).fetchone()
    return float(row[0])


def renew_lease(conn: sqlite3.Connection, op: ops.RenewLease) -> float | None:
    # Only a lease still running is renewed: once it has run out another daemon may have
    # adopted the runs, and the late daemon must learn it is dead rather than revive.
    row = conn.execute(
        f"UPDATE daemons SET renewed_at = {DB_NOW}, lease_until = {DB_NOW} + ?, "
        "http = coalesce(?, http) "
        f"WHERE daemon_id = ? AND lease_until > {DB_NOW} RETURNING lease_until",
        (op.lease, op.http, op.daemon_id),
    ).fetchone()
    return None if row is None else float(row[0])


def retire_daemon(conn: sqlite3.Connection, op: ops.RetireDaemon) -> None:
    conn.execute("UPDATE runs SET owner = NULL, epoch = epoch + 1 WHERE owner = ?",
                 (op.daemon_id,))
    conn.execute("DELETE FROM daemons WHERE daemon_id = ?", (op.daemon_id,))


def rescue_sql(lock: str = "") -> str:
    """Delete the rows of daemons whose lease ran out; ``lock`` is appended to their selection
    (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so a row a stopped daemon's open batch still holds
    is left for a later tick instead of blocking the rescuer's writer)."""
    return (
        "DELETE FROM daemons WHERE daemon_id IN (SELECT daemon_id FROM daemons "
        f"WHERE lease_until <= {DB_NOW} AND daemon_id <> ?{lock}) RETURNING daemon_id"
    )


def rescue_daemons(conn: sqlite3.Connection, op: ops.RescueDaemons, *, lock: str = ""
                   ) -> tuple[str, ...]:
    dead = tuple(r[0] for r in conn.execute(rescue_sql(lock), (op.daemon_id,)).fetchall())
    if dead:
        marks = ", ".join("?" for _ in dead)
        conn.execute(f"UPDATE runs SET owner = NULL, epoch = epoch + 1 WHERE owner IN ({marks})",
                     dead)
    return tuple(sorted(dead))


_LIVE = ", ".join(f"'{s.value}'" for s in sorted(records.NON_TERMINAL_STATUSES))


def claim_run(conn: sqlite3.Connection, op: ops.ClaimRun) -> int | None:
    # PostgreSQL: a second claimer blocks on the row, then re-checks the owner and gets none.
    # An ended run is not claimed: nothing is left to drive, and its owner stays NULL.
    row = conn.execute(
        "UPDATE runs SET epoch = CASE WHEN owner IS NULL THEN epoch + 1 ELSE epoch END, "
        f"owner = ? WHERE run_id = ? AND (owner IS NULL OR owner = ?) AND status IN ({_LIVE}) "
        "RETURNING epoch",
        (op.daemon_id, op.run_id, op.daemon_id),
    ).fetchone()
    return None if row is None else int(row[0])


# An ended run is nobody's (its end clears the owner) and keeps its cancel request: not one
# to move.
OWNED_TO_RESUME = (
    "SELECT run_id FROM runs WHERE owner = ? AND ((status = 'waiting' AND needs_resume = 1) "
    f"OR (cancel_requested IS NOT NULL AND status IN ({_LIVE}))) ORDER BY priority DESC, number"
)

# Live runs a daemon owns (the runs_owner index holds live runs only: an end clears the owner).
OWNED_LIVE = f"SELECT run_id FROM runs WHERE owner = ? AND status IN ({_LIVE}) ORDER BY run_id"

_PAUSED = f"(paused = 1 OR status = 'paused') AND status IN ({_LIVE})"
OWNED_PAUSED = f"SELECT run_id FROM runs WHERE owner = ? AND {_PAUSED}"
PAUSED_CHUNK = 500  # run ids per "IN (...)" of paused_among: far below either backend's limit


def paused_among(count: int) -> str:
    """The paused runs among ``count`` run ids (bound after the SQL)."""
    marks = ", ".join("?" for _ in range(count))
    return f"SELECT run_id FROM runs WHERE run_id IN ({marks}) AND {_PAUSED}"


_CLAIMABLE = tuple(sorted(s.value for s in records.NON_TERMINAL_STATUSES))


def claim_runs_sql(lock: str = "") -> str:
    """The claim, with ``lock`` appended to its row selection (PostgreSQL: ``FOR UPDATE SKIP
    LOCKED``; SQLite has one writer and needs none)."""
    marks = ", ".join("?" for _ in _CLAIMABLE)
    return (
        "UPDATE runs SET owner = ?, epoch = epoch + 1 WHERE run_id IN ("
        f"SELECT run_id FROM runs WHERE owner IS NULL AND status IN ({marks}) "
        # A pending run whose start is still to come is nobody's: its start timer fires on
        # whichever daemon claims the timer, and that daemon's actor claims the run then.
        f"AND NOT (status = 'pending' AND coalesce(scheduled_at, 0) > {DB_NOW}) "
        # Nor a run queued on a concurrency group: the daemon whose admission lets it start
        # claims it then (storage/sqlite/admission.py).
        "AND NOT (status = 'pending' AND admitted_at IS NULL AND EXISTS "
        "(SELECT 1 FROM run_groups g WHERE g.run_id = runs.run_id)) "
        f"ORDER BY priority DESC, number LIMIT ?{lock}) RETURNING {rows.RUN_COLUMNS}, epoch"
    )


def claim_runs(conn: sqlite3.Connection, op: ops.ClaimRuns, *, lock: str = ""
               ) -> tuple[ops.ClaimedRun, ...]:
    if op.limit <= 0:
        return ()
    found = conn.execute(claim_runs_sql(lock), (op.daemon_id, *_CLAIMABLE, op.limit)).fetchall()
    claimed = [ops.ClaimedRun(rows.run_from_row(r[:-1]), int(r[-1])) for r in found]
    return tuple(sorted(claimed, key=lambda c: (-c.run.priority, c.run.number)))


def daemon_from_row(r: Row) -> records.DaemonRecord:
    return records.DaemonRecord(
        daemon_id=r[0], name=r[1], host=r[2], pid=int(r[3]), version=r[4], socket=r[5],
        http=r[6], started_at=float(r[7]), renewed_at=float(r[8]), lease_until=float(r[9]),
        live=bool(r[10]), runs=int(r[11]), now=float(r[12]),
    )


APPLY: dict[type[Any], Callable[[Any, Any], Any]] = {
    ops.RegisterDaemon: register_daemon,
    ops.RenewLease: renew_lease,
    ops.RetireDaemon: retire_daemon,
    ops.RescueDaemons: rescue_daemons,
    ops.ClaimRuns: claim_runs,
    ops.ClaimRun: claim_run,
}
