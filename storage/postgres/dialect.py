"""SQLite-dialect statements on PostgreSQL: the seam that lets one set of mutations serve both.

The op functions in ``storage.sqlite.mutations`` (and ``interventions``, ``schedules``) are
written against a ``sqlite3.Connection``: ``conn.execute(sql, params)`` returning a cursor.
``SyncConnection`` offers that surface over an asyncpg connection owned by the writer thread,
and ``to_postgres`` rewrites the few SQLite-only spellings they use. The rewrite is closed: a
statement it does not know how to carry is an error at the first test that runs it, never a
silent change of meaning.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import asyncpg

from storage.sqlite.daemons import DB_NOW

# Primary keys of the tables written with ``INSERT OR REPLACE``: PostgreSQL's upsert needs them.
_REPLACE_KEYS: dict[str, tuple[str, ...]] = {
    "run_cancel_on": ("run_id", "rule"),
    "step_attempts": ("run_no", "step_id", "attempt"),
}
# Tables whose identity column SQLite code reads back as ``cursor.lastrowid``.
_LASTROWID: dict[str, str] = {"runs": "number"}

_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO ", re.IGNORECASE)
_OR_REPLACE = re.compile(r"^\s*INSERT OR REPLACE INTO (\w+) \(([^)]*)\)", re.IGNORECASE)
_INSERT_INTO = re.compile(r"^\s*INSERT INTO (\w+) ", re.IGNORECASE)
_JSON_EXTRACT = re.compile(r"json_extract\((\w+), '\$\.(\w+)'\)")
_LIMIT_PARAM = re.compile(r"\bLIMIT \?")
_PG_NOW = "(extract(epoch FROM now())::double precision)"


@lru_cache(maxsize=4096)
def to_postgres(sql: str) -> str:
    """``sql`` (SQLite dialect, ``?`` parameters) as PostgreSQL (``$n`` parameters)."""
    suffix = ""
    if _OR_IGNORE.match(sql):
        sql = _OR_IGNORE.sub("INSERT INTO ", sql, count=1)
        suffix = " ON CONFLICT DO NOTHING"
    elif m := _OR_REPLACE.match(sql):
        table = m.group(1)
        key = _REPLACE_KEYS.get(table)
        if key is None:
            raise ValueError(f"INSERT OR REPLACE into {table!r}: its key is not known here")
        cols = [c.strip() for c in m.group(2).split(",")]
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in key)
        sql = sql.replace("INSERT OR REPLACE INTO", "INSERT INTO", 1)
        suffix = f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
    elif (m := _INSERT_INTO.match(sql)) and m.group(1) in _LASTROWID:
        suffix = f" RETURNING {_LASTROWID[m.group(1)]}"
    sql = _JSON_EXTRACT.sub(r"(\1::jsonb ->> '\2')", sql)
    # SQLite's LIMIT -1 means "no limit"; PostgreSQL's is LIMIT NULL.
    sql = _LIMIT_PARAM.sub("LIMIT NULLIF(?::bigint, -1)", sql)
    # The database clock: leases are judged by PostgreSQL's.
    sql = sql.replace(DB_NOW, _PG_NOW)
    return _number_params(sql) + suffix


def _number_params(sql: str) -> str:
    out: list[str] = []
    n = 0
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        elif ch == "?" and not quoted:
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


def rowcount(status: str) -> int:
    """Rows affected, from a command tag such as ``INSERT 0 1`` or ``UPDATE 3``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


class Cursor:
    """The part of ``sqlite3.Cursor`` the mutations use, over rows already fetched."""

    __slots__ = ("_rows", "lastrowid", "rowcount")

    def __init__(self, rows: list[Any], count: int, lastrowid: int | None = None) -> None:
        self._rows = rows
        self.rowcount = count
        self.lastrowid = lastrowid

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


def _returns_rows(sql: str) -> bool:
    head = sql.lstrip()[:6].upper()
    return head in ("SELECT", "WITH (", "VALUES") or " RETURNING " in sql


class SyncConnection:
    """A blocking, ``sqlite3``-shaped face of one asyncpg connection.

    Owned by one thread, which also owns ``loop`` (not running between calls): each statement
    runs the loop until its reply is in. Only the writer thread uses it.
    """

    def __init__(self, conn: asyncpg.Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.raw = conn
        self._loop = loop

    def run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        pg = to_postgres(sql)
        if _returns_rows(pg):
            found = list(self.run(self.raw.fetch(pg, *params)))
            last = found[0][0] if found and " RETURNING " in pg else None
            return Cursor(found, len(found), last)
        status = self.run(self.raw.execute(pg, *params)) if params else self.run(
            self.raw.execute(pg)
        )
        return Cursor([], rowcount(str(status)))

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> Cursor:
        seq = list(seq)
        if seq:
            self.run(self.raw.executemany(to_postgres(sql), seq))
        return Cursor([], -1)

    @property
    def in_transaction(self) -> bool:
        return bool(self.raw.is_in_transaction())
