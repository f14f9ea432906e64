"""``list_runs(search=)`` on PostgreSQL: a case-insensitive substring match over the
``run_search`` documents (migration 0006), served by a GIN trigram index (pg_trgm).

The same semantics as SQLite's FTS5 trigram phrase: the text is literal (``%``, ``_`` and
``\\`` are escaped, so nothing in it is a pattern) and at least 3 characters long.
"""

from __future__ import annotations

from typing import Any

from storage.sqlite.storage import check_search


def trigram_search(text: str) -> tuple[str, Any]:
    literal = check_search(text).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    # LIKE's default escape character is the backslash on PostgreSQL.
    return ("runs.number IN (SELECT number FROM run_search WHERE body ILIKE ?)",
            f"%{literal}%")
