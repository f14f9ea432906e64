"""Numbered migrations, tracked by ``PRAGMA user_version``.

Migrations are ``storage/sqlite/migrations/NNNN_name.sql``, loaded with ``importlib.resources``.
Each one runs in its own transaction together with the ``user_version`` bump, so a crash
mid-migration leaves the previous version intact.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from functools import cache
from importlib import resources

from storage import errors
from storage.instruments import NO_INSTRUMENT, Instrument

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """All migrations shipped with this build, by version. Versions must be 1, 2, 3, ..."""
    found: list[Migration] = []
    for entry in resources.files("storage.sqlite.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise RuntimeError(f"migration {mig.version:04d}_{mig.name} should be {expected:04d}")
    return tuple(found)


def latest_version() -> int:
    """The newest schema version this build knows."""
    return len(migrations())


def user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def check_version(conn: sqlite3.Connection, path: str) -> int:
    """The file's schema version; ``SchemaTooNew`` if a newer build wrote it."""
    found = user_version(conn)
    if found > latest_version():
        raise errors.SchemaTooNew(path, found, latest_version())
    return found


def migrate(
    conn: sqlite3.Connection,
    path: str,
    target: int | None = None,
    *,
    instrument: Instrument = NO_INSTRUMENT,
) -> int:
    """Apply every migration above the file's version up to ``target`` (default: latest).

    ``conn`` must be in autocommit mode (``isolation_level=None``). Returns the new version.
    """
    goal = latest_version() if target is None else target
    current = check_version(conn, path)
    for mig in migrations():
        if current < mig.version <= goal:
            try:
                # One transaction for the migration and its version bump. executescript commits
                # a pending transaction before it starts, so the tail goes through execute().
                conn.executescript(f"BEGIN IMMEDIATE;\n{mig.sql}\n;")
                instrument.reached("migration.midway")
                conn.execute(f"PRAGMA user_version = {mig.version}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            current = mig.version
    return current
