from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

import storage as st
from tests import pg


def deep_subset(match: Any, payload: Any) -> bool:
    """The caller-supplied matcher: ``match`` is a deep subset of ``payload``."""
    if isinstance(match, dict):
        return isinstance(payload, dict) and all(
            k in payload and deep_subset(v, payload[k]) for k, v in match.items()
        )
    return bool(match == payload)


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[st.Storage]:
    """One contract suite over every backend: SQLite on a file (WAL, synchronous=full), and
    PostgreSQL on a fresh database of the session's throwaway cluster."""
    if request.param == "postgres":
        cluster = request.getfixturevalue("pg_cluster")
        url = await pg.create_database(cluster)
        try:
            async with st.PostgresStorage.open(url) as p:
                yield p
        finally:
            await pg.drop_database(cluster, url)
        return
    async with st.SQLiteStorage.open(tmp_path / "wf.db", synchronous="full") as s:
        yield s


async def make_run(s: st.Storage, run_id: str = "run-1", **kw: Any) -> st.RunRecord:
    kw.setdefault("workflow_id", "wf")
    kw.setdefault("created_at", 1000.0)
    created = await s.create_run(st.CreateRun(run_id=run_id, **kw))
    return created.run


class Raw:
    """Plain SQL on a storage's database beside it, in SQLite's dialect (PostgreSQL's is
    rewritten by the backend's own adapter): for tests that plant or inspect rows directly."""

    def __init__(self, lite: sqlite3.Connection | None, pg_conn: Any | None) -> None:
        self._lite = lite
        self._pg = pg_conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.fetch(sql, params)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._lite is not None:
            return [tuple(r) for r in self._lite.execute(sql, tuple(params)).fetchall()]
        from storage.postgres.dialect import to_postgres

        return [tuple(r) for r in await self._pg.fetch(to_postgres(sql), *params)]

    async def tables(self) -> dict[str, set[str]]:
        """Every table (not the search index's own) → its columns."""
        if self._lite is not None:
            names = [r[0] for r in self._lite.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'run_search%' AND name NOT LIKE 'sqlite%'")]
            return {n: {r[1] for r in self._lite.execute(f"PRAGMA table_info({n})")}
                    for n in names}
        found = await self._pg.fetch(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' "
            "AND c.table_name NOT IN ('wf_schema', 'run_search')")
        out: dict[str, set[str]] = {}
        for table, column in found:
            out.setdefault(table, set()).add(column)
        return out


@asynccontextmanager
async def raw(s: st.Storage) -> AsyncIterator[Raw]:
    if isinstance(s, st.PostgresStorage):
        import asyncpg

        conn = await asyncpg.connect(s.url)
        try:
            yield Raw(None, conn)
        finally:
            await conn.close()
        return
    assert isinstance(s, st.SQLiteStorage)
    lite = sqlite3.connect(s.path, isolation_level=None)
    try:
        lite.execute("PRAGMA foreign_keys = ON")
        yield Raw(lite, None)
    finally:
        lite.close()
