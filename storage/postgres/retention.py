"""Retention ops on PostgreSQL: SQLite's pruning code as it is (through the dialect adapter),
and the two ops that only make sense for SQLite's file as no-ops.

``IncrementalVacuum`` gives a SQLite file's free pages back; PostgreSQL's autovacuum reclaims
dead rows itself and a table's file is never shrunk by us (``VACUUM FULL`` would lock it), so
there is nothing to do and no free pages to report. ``MergeSearchIndex`` merges FTS5 segments;
the GIN trigram index has no segments (autovacuum folds its pending list), so there is never
merge work: ``False`` ends the retention sweep's merge loop at once.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from storage import ops
from storage.sqlite import mutations, retention


def incremental_vacuum(conn: sqlite3.Connection, op: ops.IncrementalVacuum) -> int:
    return 0  # autovacuum's job on PostgreSQL


def merge_search_index(conn: sqlite3.Connection, op: ops.MergeSearchIndex) -> bool:
    return False  # a GIN index has no segments to merge


APPLY: dict[type[Any], mutations.Apply] = {
    **retention.APPLY,
    ops.IncrementalVacuum: incremental_vacuum,
    ops.MergeSearchIndex: merge_search_index,
}
"""Retention op type → the function that applies it on PostgreSQL."""
