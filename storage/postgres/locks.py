"""Locks that close the lost wake-ups of check-then-act ops on PostgreSQL (reviews/scaleout.md
§2.7), taken at the start of a batch, before any op of it runs.

At READ COMMITTED two transactions that each "check, then insert" can both miss the other:
- ``SendSignal`` finds no waiting waitpoint and stores the signal in the inbox while
  ``RegisterWaitpoint(SIGNAL)`` of the same run finds an empty inbox and waits: lost signal;
- ``RecordEvent`` finds no waiting waitpoint while ``RegisterWaitpoint(EVENT, lookback)`` of its
  type finds no stored event: lost event.
Both sides of each pair take the same lock first: the run's row (``FOR NO KEY UPDATE``) for a
signal, a transaction advisory lock on the event type for an event (no migration: no table of
event types to lock a row of). The second side waits for the first to commit, and its reads,
later statements, see what the first wrote. A registration without lookback needs no lock: the
serial order "event, then waitpoint" is a correct outcome.

Locks are taken for the whole batch at once, advisory locks then rows, each in sorted order, so
two batches never take them in opposite orders. SQLite has one writer: nothing to lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage import ops
from storage.postgres.dialect import SyncConnection
from storage.records import WaitpointKind

_EVENT_TYPE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('wf.event:' || ?::text, 0))"
_RUN_ROWS = ("SELECT run_id FROM runs WHERE run_id = ANY(?) ORDER BY run_id "
             "FOR NO KEY UPDATE")


def keys(batch: Iterable[ops.WriteOp[Any]]) -> tuple[list[str], list[str]]:
    """(event types, run ids) the racing ops of ``batch`` must lock, sorted."""
    types: set[str] = set()
    runs: set[str] = set()
    for op in batch:
        if type(op) is ops.SendSignal:
            runs.add(op.run_id)
        elif type(op) is ops.RecordEvent:
            types.add(op.type)
        elif type(op) is ops.RegisterWaitpoint:
            if op.kind is WaitpointKind.SIGNAL:
                runs.add(op.run_id)
            elif op.kind is WaitpointKind.EVENT and op.lookback_from is not None and op.event_type:
                types.add(op.event_type)
    return sorted(types), sorted(runs)


def lock(conn: SyncConnection, batch: Iterable[ops.WriteOp[Any]]) -> None:
    types, runs = keys(batch)
    for event_type in types:
        conn.execute(_EVENT_TYPE_LOCK, (event_type,))
    if runs:
        conn.execute(_RUN_ROWS, (runs,)).fetchall()
