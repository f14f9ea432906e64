"""``wf migrate --to URL``: copy a stopped daemon's SQLite database into PostgreSQL.

Every table, in one PostgreSQL transaction (all or nothing), row counts compared per table
before it commits. The SQLite file is first brought to this build's schema, the target is
migrated to the same version and must be empty, and the target's advisory lock is held so no
daemon starts on it mid-copy. Identity counters (run numbers, inbox seqs, registration order)
continue after the copied rows, so the runs go on where they stopped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from storage import errors
from storage.postgres import schema
from storage.postgres.storage import DAEMON_LOCK, redact
from storage.postgres.translate import translate_errors
from storage.sqlite import SQLiteStorage

# Copied first (foreign keys point at them); every other table follows in name order.
_FIRST = ("runs", "waitpoints")
# Identity columns whose sequence must continue after the copied rows.
_IDENTITIES = (("runs", "number"), ("steps", "id"), ("signal_inbox", "seq"),
               ("waitpoints", "rowid"))
# Live process state, not data: the daemons that will run on PostgreSQL register themselves;
# and SQLite's list of search documents to write (0016): the copy rebuilds the index from rows.
_NOT_COPIED = ("daemons", "search_backlog")
# Columns SQLite keeps implicitly that the PostgreSQL twin stores.
_IMPLICIT = {"waitpoints": "rowid"}


def _tables(conn: sqlite3.Connection) -> list[str]:
    found = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    virtual = [name for name, sql in found if str(sql).upper().startswith("CREATE VIRTUAL")]
    # A virtual table (full-text index) and its shadow tables are rebuilt, not copied.
    names = [n for n, _ in found
             if n not in virtual and not any(n.startswith(f"{v}_") for v in virtual)
             and n not in _NOT_COPIED]
    return sorted(names, key=lambda n: (_FIRST.index(n) if n in _FIRST else len(_FIRST), n))


async def copy_sqlite_to_postgres(sqlite_path: Path, url: str) -> dict[str, int]:
    """Copy every table; returns ``{table: rows}``. The SQLite file must not be in use."""
    if not sqlite_path.exists():
        raise errors.NotFound("database file", str(sqlite_path))
    async with SQLiteStorage.open(sqlite_path):
        pass  # brings the file to this build's schema (SchemaTooNew if it is newer)
    where = redact(url)
    src = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        with translate_errors():
            dst = await asyncpg.connect(url)
        try:
            with translate_errors():
                if not await dst.fetchval("SELECT pg_try_advisory_lock($1)", DAEMON_LOCK):
                    raise errors.StorageLocked(where)
                await schema.migrate(dst, where)
                return await _copy(src, dst, where)
        finally:
            await dst.close()
    finally:
        src.close()


async def _copy(src: sqlite3.Connection, dst: asyncpg.Connection, where: str) -> dict[str, int]:
    tables = _tables(src)
    target = {r[0] for r in await dst.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    missing = [t for t in tables if t not in target]
    if missing:
        raise errors.InvalidOperation(
            f"{where} has no table {', '.join(missing)}: its schema is older than the file's",
            data={"missing": missing})
    counts: dict[str, int] = {}
    async with dst.transaction():
        if await dst.fetchval("SELECT EXISTS (SELECT 1 FROM daemons "
                              "WHERE lease_until > extract(epoch FROM now()))"):
            raise errors.InvalidOperation(
                f"{where} has a live daemon registered: stop every daemon on it first",
                data={"table": "daemons"})
        for table in tables:
            if await dst.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
                raise errors.InvalidOperation(
                    f"{where} is not empty (table {table} has rows): migrate into a new database",
                    data={"table": table})
        # The copied rows keep their journal numbers: the numbering and search triggers are
        # off for the copy (this transaction only), and the search documents are built after.
        for table in tables:
            await dst.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        src.execute("BEGIN")  # one snapshot of the file for every table
        for table in tables:
            cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
            if table in _IMPLICIT:
                cols.append(_IMPLICIT[table])
            rows: list[tuple[Any, ...]] = src.execute(
                f"SELECT {', '.join(cols)} FROM {table}").fetchall()
            if rows:
                await dst.copy_records_to_table(table, records=rows, columns=cols)
            copied = int(await dst.fetchval(f"SELECT count(*) FROM {table}"))
            if copied != len(rows):
                raise errors.StorageError(
                    f"copy of {table} is incomplete: {copied} of {len(rows)} rows",
                    data={"table": table, "copied": copied, "expected": len(rows)})
            counts[table] = copied
        src.execute("COMMIT")
        # Nobody drives the copied runs yet: the first daemon on PostgreSQL claims them.
        await dst.execute("UPDATE runs SET owner = NULL WHERE owner IS NOT NULL")
        for table in tables:
            await dst.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        await dst.execute("INSERT INTO run_search (number, body) "
                          "SELECT number, body FROM run_search_doc")
        for table, column in _IDENTITIES:
            await dst.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)")
    return counts
