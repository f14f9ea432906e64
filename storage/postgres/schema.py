"""Numbered PostgreSQL migrations, tracked in the one-row table ``wf_schema``.

Migrations are ``storage/postgres/migrations/NNNN_name.sql``, numbered like SQLite's (the same
version means the same tables and columns). Each runs in its own transaction with the version
bump, under a transaction-level advisory lock, so two processes opening one fresh database do
not both migrate it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import asyncpg

from storage import errors

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
MIGRATION_LOCK = 0x77667363  # pg_advisory_xact_lock key held while migrating ("wfsc")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """All PostgreSQL migrations shipped with this build, by version (1, 2, 3, ...)."""
    found: list[Migration] = []
    for entry in resources.files("storage.postgres.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise RuntimeError(f"migration {mig.version:04d}_{mig.name} should be {expected:04d}")
    return tuple(found)


def latest_version() -> int:
    return len(migrations())


async def schema_version(conn: asyncpg.Connection) -> int:
    """The database's schema version (0: never migrated)."""
    exists = await conn.fetchval("SELECT to_regclass('wf_schema') IS NOT NULL")
    if not exists:
        return 0
    found = await conn.fetchval("SELECT version FROM wf_schema")
    return int(found or 0)


async def migrate(conn: asyncpg.Connection, where: str, target: int | None = None) -> int:
    """Apply every migration above the database's version up to ``target`` (default: latest).
    ``SchemaTooNew`` if a newer build wrote the database. Returns the new version."""
    goal = latest_version() if target is None else target
    current = await schema_version(conn)
    if current > latest_version():
        raise errors.SchemaTooNew(where, current, latest_version())
    for mig in migrations():
        if not current < mig.version <= goal:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS wf_schema (version integer NOT NULL)"
            )
            now = await conn.fetchval("SELECT version FROM wf_schema")
            if now is not None and now >= mig.version:  # another process got here first
                current = int(now)
                continue
            await conn.execute(mig.sql)
            if now is None:
                await conn.execute("INSERT INTO wf_schema (version) VALUES ($1)", mig.version)
            else:
                await conn.execute("UPDATE wf_schema SET version = $1", mig.version)
        current = mig.version
    return current
