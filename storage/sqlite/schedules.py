"""How the schedule ops change the database (SPEC §2a). Runs on the writer thread, inside its
transaction, like :mod:`storage.sqlite.mutations`.

A schedule's row is the truth; its timer ``schedule:<name>`` only wakes the engine at the row's
``next_fire_at``. Every op that moves the row moves the timer in the same transaction, so the
two never disagree after a crash. Nothing here computes a due time: the engine does, and passes
the results in.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from storage import errors, ops, records
from storage.records import RunStatus, ScheduleRecord, TimerKind
from storage.sqlite import mutations, rows
from storage.sqlite.rows import dumps

Conn = sqlite3.Connection

_SELECT = f"SELECT {rows.SCHEDULE_COLUMNS} FROM schedules WHERE name = ?"
_SELECT_RUN = f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE run_id = ?"


def _get(conn: Conn, name: str) -> ScheduleRecord | None:
    row = conn.execute(_SELECT, (name,)).fetchone()
    return None if row is None else rows.schedule_from_row(row)


def _place_timer(conn: Conn, schedule: ScheduleRecord, at: float) -> None:
    """The schedule's timer at its ``next_fire_at``, or none (paused, or no fire left)."""
    timer_id = ops.schedule_timer_id(schedule.name)
    if schedule.paused or schedule.next_fire_at is None:
        conn.execute("DELETE FROM timers WHERE timer_id = ?", (timer_id,))
        return
    mutations.upsert_timer(conn, ops.UpsertTimer(
        timer_id, TimerKind.SCHEDULE, schedule.next_fire_at, at,
        payload={"schedule": schedule.name},
    ))


def upsert_schedule(conn: Conn, op: ops.UpsertSchedule) -> ScheduleRecord:
    next_due = op.next_due_at if op.next_due_at is not None else op.next_fire_at
    paused = None if op.paused is ops.UNSET else int(op.paused)
    conn.execute(
        "INSERT INTO schedules (name, workflow_id, spec, next_fire_at, last_fire_at, updated_at, "
        "source, paused, next_due_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, coalesce(?, 0), "
        "?, ?) ON CONFLICT (name) DO UPDATE SET workflow_id = excluded.workflow_id, "
        "spec = excluded.spec, next_fire_at = excluded.next_fire_at, "
        "last_fire_at = coalesce(excluded.last_fire_at, schedules.last_fire_at), "
        "updated_at = excluded.updated_at, source = excluded.source, "
        "paused = coalesce(?, schedules.paused), next_due_at = excluded.next_due_at",
        (op.name, op.workflow_id, dumps(op.spec) or "null", op.next_fire_at, op.last_fire_at,
         op.updated_at, op.source.value, paused, next_due, op.updated_at, paused),
    )
    stored = _get(conn, op.name)
    assert stored is not None
    _place_timer(conn, stored, op.updated_at)
    return stored


def delete_schedule(conn: Conn, op: ops.DeleteSchedule) -> bool:
    conn.execute("DELETE FROM timers WHERE timer_id = ?", (ops.schedule_timer_id(op.name),))
    return conn.execute("DELETE FROM schedules WHERE name = ?", (op.name,)).rowcount == 1


def pause_schedule(conn: Conn, op: ops.PauseSchedule) -> ScheduleRecord:
    if op.paused:
        cur = conn.execute(
            "UPDATE schedules SET paused = 1, updated_at = ? WHERE name = ?", (op.at, op.name)
        )
    else:
        cur = conn.execute(
            "UPDATE schedules SET paused = 0, next_due_at = ?, next_fire_at = ?, updated_at = ? "
            "WHERE name = ?",
            (op.next_due_at, op.next_fire_at, op.at, op.name),
        )
    if cur.rowcount == 0:
        raise errors.NotFound("schedule", op.name)
    stored = _get(conn, op.name)
    assert stored is not None
    _place_timer(conn, stored, op.at)
    return stored


def fire_schedule(conn: Conn, op: ops.FireSchedule) -> ops.ScheduleFired:
    schedule = _get(conn, op.name)
    if schedule is None:
        return ops.ScheduleFired(None, None, False, False, True, None)
    moves = op.expect_next_due is not ops.UNSET
    if moves and (schedule.paused or schedule.next_due_at != op.expect_next_due):
        return ops.ScheduleFired(schedule, None, False, False, True, None)
    previous = None
    if schedule.last_run_id is not None:
        found = conn.execute(_SELECT_RUN, (schedule.last_run_id,)).fetchone()
        previous = None if found is None else rows.run_from_row(found)
        if previous is not None and previous.is_terminal:
            previous = None
    dropped = previous is not None and (
        op.drop_if == "active"
        or (op.drop_if == "waiting" and previous.status is RunStatus.PENDING
            and previous.started_at is None)
    )
    run: records.RunRecord | None = None
    created = False
    sets = ["updated_at = ?", "missed = missed + ?"]
    params: list[Any] = [op.at, op.missed]
    if dropped:
        sets.append("skipped = skipped + 1")
    else:
        made = mutations.create_run(conn, op.run)
        run, created = made.run, made.created
        sets += ["last_fire_at = ?", "last_run_id = ?", "fired = fired + ?"]
        params += [op.due_at, run.run_id, int(created)]
    if moves:
        sets += ["next_due_at = ?", "next_fire_at = ?"]
        params += [op.next_due_at, op.next_fire_at]
    conn.execute(f"UPDATE schedules SET {', '.join(sets)} WHERE name = ?", (*params, op.name))
    stored = _get(conn, op.name)
    assert stored is not None
    if moves:
        _place_timer(conn, stored, op.at)
    return ops.ScheduleFired(stored, run, created, dropped, False, previous)


APPLY: dict[type[Any], mutations.Apply] = {
    ops.UpsertSchedule: upsert_schedule,
    ops.DeleteSchedule: delete_schedule,
    ops.PauseSchedule: pause_schedule,
    ops.FireSchedule: fire_schedule,
}
"""Schedule op type → the function that applies it (merged into the writer's table)."""
