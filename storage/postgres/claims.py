"""Claims that several daemons make at once on PostgreSQL (SPEC §13): due timers and unowned
runs are selected ``FOR UPDATE SKIP LOCKED``, so concurrent claimers take disjoint rows and a
timer fires, a run is claimed, exactly once. Otherwise SQLite's op code, unchanged (SQLite has
one writer: nothing to skip)."""

from __future__ import annotations

import sqlite3
from typing import Any

from storage import ops
from storage.sqlite import admission, daemons, mutations

_SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"


def claim_due_timers(conn: sqlite3.Connection, op: ops.ClaimDueTimers
                     ) -> tuple[ops.FiredTimer, ...]:
    # Locked until this batch commits: another daemon's claim skips these rows, and by the
    # time it could see them again they are deleted (or moved a lease on, for schedules).
    due = conn.execute(
        "SELECT timer_id FROM timers WHERE due_at <= ? ORDER BY due_at, timer_id LIMIT ?"
        + _SKIP_LOCKED,
        (op.before, op.limit),
    ).fetchall()
    fired = (mutations.fire_timer(conn, ops.FireTimer(timer_id, op.before))
             for (timer_id,) in due)
    return tuple(f for f in fired if f is not None)


def claim_runs(conn: sqlite3.Connection, op: ops.ClaimRuns) -> tuple[ops.ClaimedRun, ...]:
    return daemons.claim_runs(conn, op, lock=_SKIP_LOCKED)


# End the writer session of every daemon whose lease ran out. A daemon stopped (SIGSTOP) inside
# a batch keeps its lease row locked, and rows of the runs it was writing, for as long as it is
# stopped; the server's idle-in-transaction timeout does not always end it (a session stopped
# mid-statement is not idle). It is dead by the lease, its writes are fenced, so ending its
# session loses nothing and frees the locks. The backend_start guard never ends a newer session
# that happens to reuse the pid.
_END_DEAD_WRITERS = (
    "SELECT pg_terminate_backend(d.backend_pid::integer) FROM daemons d "
    "JOIN pg_stat_activity a ON a.pid = d.backend_pid "
    "WHERE d.lease_until <= extract(epoch FROM now()) AND d.daemon_id <> $1 "
    "AND a.backend_start <= to_timestamp(d.renewed_at)"
)


def rescue_daemons(conn: sqlite3.Connection, op: ops.RescueDaemons) -> tuple[str, ...]:
    conn.execute(_END_DEAD_WRITERS, (op.daemon_id,))
    return daemons.rescue_daemons(conn, op, lock=_SKIP_LOCKED)


# Admission's one lock (storage.sqlite.admission): "wfad" as a 64-bit advisory lock key.
ADMISSION_LOCK = 0x77666164


class AdvisoryLocks:
    """Admission's lock: a transaction advisory lock, released when the batch's transaction
    ends (commit or rollback)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def lock(self) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(?::bigint)", (ADMISSION_LOCK,))


def admit_runs(conn: sqlite3.Connection, op: ops.AdmitRuns) -> ops.Admitted:
    return admission.admit_runs(conn, op, locks=AdvisoryLocks(conn))


def debounce_submit(conn: sqlite3.Connection, op: ops.DebounceSubmit) -> ops.DebouncedCreated:
    return admission.debounce_submit(conn, op, locks=AdvisoryLocks(conn))


def take_rate_limits(conn: sqlite3.Connection, op: ops.TakeRateLimits
                     ) -> tuple[float, tuple[str, ...]]:
    return admission.take_rate_limits(conn, op, locks=AdvisoryLocks(conn))


APPLY: dict[type[Any], mutations.Apply] = {
    ops.AdmitRuns: admit_runs,
    ops.DebounceSubmit: debounce_submit,
    ops.TakeRateLimits: take_rate_limits,
    ops.RescueDaemons: rescue_daemons,
    ops.ClaimDueTimers: claim_due_timers,
    ops.ClaimRuns: claim_runs,
}
"""Op type → its PostgreSQL form, where it differs from SQLite's."""
