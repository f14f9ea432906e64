"""The search index's documents, written once per writer batch (migration 0016).

Triggers note which FTS5 documents of ``run_search`` a transaction changed (``search_backlog``);
the writer calls :func:`write_backlog` just before COMMIT, so the index is as current as the
rows at every commit. Written from the triggers themselves, each document cost one FTS5 flush
(FTS5 writes its pending terms out at every savepoint a trigger's statement opens); written
here, a batch's documents share one.
"""

from __future__ import annotations

import sqlite3

# A document's text by part (rowid = number * 4 + part), as migration 0015's views build it.
_BODY = """
CASE b.doc % 4
    WHEN 0 THEN r.run_id || char(10) || r.workflow_id || char(10) || coalesce(r.input, '')
                || char(10) || r.tags
    WHEN 1 THEN CASE WHEN r.output IS NOT NULL OR r.error IS NOT NULL
                     THEN coalesce(r.output, '') || char(10) || coalesce(r.error, '') END
    ELSE (SELECT group_concat(m.key || '=' || coalesce(m.value, ''), char(10))
          FROM metadata m WHERE m.run_id = r.run_id)
END
"""

_ANY = "SELECT 1 FROM search_backlog LIMIT 1"
_DELETE_STALE = ("DELETE FROM run_search WHERE rowid IN "
                 "(SELECT doc FROM search_backlog WHERE NOT fresh)")
_INSERT = (
    "INSERT INTO run_search (rowid, body) SELECT doc, body FROM ("
    f"SELECT b.doc AS doc, {_BODY} AS body FROM search_backlog b "
    "JOIN runs r ON r.number = b.doc / 4) WHERE body IS NOT NULL"
)
_CLEAR = "DELETE FROM search_backlog"


def write_backlog(conn: sqlite3.Connection) -> None:
    """Rewrite the documents the open transaction changed (nothing to do: one lookup)."""
    if conn.execute(_ANY).fetchone() is None:
        return
    conn.execute(_DELETE_STALE)
    conn.execute(_INSERT)
    conn.execute(_CLEAR)
