"""Full-text search over runs (SPEC §5 ``list(search=)``): the FTS5 trigram index follows every
write path in the same transaction, and a migration from 0005 backfills the runs that exist."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import asyncpg
import orjson
import pytest

import storage as st
from storage.postgres import schema as pg_schema
from storage.sqlite import schema
from tests import pg
from tests.storage.conftest import make_run


async def ids(storage: st.Storage, text: str, **kw: object) -> list[str]:
    found = await storage.list_runs(search=text, **kw)  # type: ignore[arg-type]
    return [r.run_id for r in found]


async def test_search_finds_runs_by_id_input_output_error_tags_and_metadata(
    storage: st.Storage,
) -> None:
    await make_run(storage, "order-7781", input={"customer": "Ada Lovelace"}, created_at=1.0)
    await make_run(storage, "r2", tags=("priority-gold",), created_at=2.0)
    await make_run(storage, "r3", created_at=3.0)
    await storage.execute(st.UpdateRun("r3", at=4.0, status=st.RunStatus.COMPLETED,
                                       output={"invoice": "INV-5521"}))
    await make_run(storage, "r4", created_at=5.0)
    await storage.execute(st.UpdateRun("r4", at=6.0, status=st.RunStatus.FAILED,
                                       error={"code": "CARD_DECLINED"}))
    await make_run(storage, "r5", created_at=7.0)
    await storage.execute(st.ApplyMetadata("r5", "r5", 0, st.MetadataOpKind.SET, "region",
                                           "eu-west-3"))

    assert await ids(storage, "7781") == ["order-7781"]
    assert await ids(storage, "lovelace") == ["order-7781"]  # case-insensitive
    assert await ids(storage, "gold") == ["r2"]
    assert await ids(storage, "INV-55") == ["r3"]
    assert await ids(storage, "declined") == ["r4"]
    assert await ids(storage, "eu-west") == ["r5"]
    assert await ids(storage, "nothing like this") == []
    # Operators and quotes are plain text, never FTS5 syntax.
    assert await ids(storage, 'Ada" OR "r2') == []


async def test_search_follows_updates_and_metadata_removal(storage: st.Storage) -> None:
    await make_run(storage, "r1", input={"v": "first-value"})
    await storage.execute(st.UpdateRun("r1", at=2.0, status=st.RunStatus.COMPLETED,
                                       output="second-value"))
    assert await ids(storage, "first-value") == ["r1"]
    assert await ids(storage, "second-value") == ["r1"]
    await storage.execute(st.ApplyMetadata("r1", "r1", 0, st.MetadataOpKind.SET, "k", "meta-one"))
    await storage.execute(st.ApplyMetadata("r1", "r1", 1, st.MetadataOpKind.SET, "k", "meta-two"))
    assert await ids(storage, "meta-one") == []
    assert await ids(storage, "meta-two") == ["r1"]
    await storage.execute(st.ApplyMetadata("r1", "r1", 2, st.MetadataOpKind.REMOVE, "k"))
    assert await ids(storage, "meta-two") == []
    assert await ids(storage, "second-value") == ["r1"]


async def test_search_combines_with_the_other_filters(storage: st.Storage) -> None:
    for i in range(6):
        await make_run(storage, f"r{i}", workflow_id="w1" if i % 2 else "w2",
                       input={"who": "alice" if i < 4 else "bob"}, created_at=float(i),
                       tags=("t",) if i in (1, 3) else ())
    assert await ids(storage, "alice") == ["r3", "r2", "r1", "r0"]
    assert await ids(storage, "alice", workflow_id="w1") == ["r3", "r1"]
    assert await ids(storage, "alice", tag="t", limit=1) == ["r3"]
    assert await ids(storage, "alice", since=1.0, until=3.0) == ["r2", "r1"]
    assert await ids(storage, "bob", status=st.RunStatus.PENDING) == ["r5", "r4"]


async def test_search_shorter_than_a_trigram_is_refused(storage: st.Storage) -> None:
    with pytest.raises(ValueError, match="at least 3 characters"):
        await storage.list_runs(search="ab")


async def test_migration_backfills_existing_runs_and_delete_clears_the_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wf.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    schema.migrate(conn, str(path), target=5)
    conn.execute("INSERT INTO runs (run_id, workflow_id, status, input, created_at, updated_at) "
                 "VALUES ('old-run', 'wf', 'completed', '{\"needle\": 1}', 1.0, 1.0)")
    conn.execute("INSERT INTO metadata (run_id, key, value) VALUES ('old-run', 'k', '\"hay\"')")
    schema.migrate(conn, str(path))
    docs = dict(conn.execute("SELECT rowid % 4, body FROM run_search").fetchall())
    assert set(docs) == {0, 2}, docs  # the head and the metadata; no result yet (0015)
    assert "needle" in docs[0] and "old-run" in docs[0] and docs[2] == 'k="hay"'
    conn.execute("DELETE FROM runs WHERE run_id = 'old-run'")
    assert conn.execute("SELECT count(*) FROM run_search").fetchone() == (0,)
    conn.close()


async def test_postgres_migration_backfills_existing_runs_and_delete_clears_the_index(
    pg_cluster: pg.Cluster,
) -> None:
    url = await pg.create_database(pg_cluster, migrated=False)
    try:
        conn = await asyncpg.connect(url)
        try:
            await pg_schema.migrate(conn, "test", target=5)
            await conn.execute(
                "INSERT INTO runs (run_id, workflow_id, status, input, created_at, updated_at) "
                "VALUES ('old-run', 'wf', 'completed', '{\"needle\": 1}', 1.0, 1.0)")
            await conn.execute(
                "INSERT INTO metadata (run_id, key, value) VALUES ('old-run', 'k', '\"hay\"')")
            await pg_schema.migrate(conn, "test")
            body = await conn.fetch("SELECT body FROM run_search")
            assert len(body) == 1 and "needle" in body[0][0] and 'k="hay"' in body[0][0]
            await conn.execute("DELETE FROM runs WHERE run_id = 'old-run'")
            assert await conn.fetchval("SELECT count(*) FROM run_search") == 0
        finally:
            await conn.close()
    finally:
        await pg.drop_database(pg_cluster, url)


async def test_search_text_is_literal_never_a_pattern(storage: st.Storage) -> None:
    """LIKE's wildcards and escape (PostgreSQL) and FTS5's syntax (SQLite) are plain text."""
    await make_run(storage, "r1", input={"v": "50%_off\\now"}, created_at=1.0)
    await make_run(storage, "r2", input={"v": "500 offers"}, created_at=2.0)
    assert await ids(storage, "0%_o") == ["r1"]
    assert await ids(storage, "%_o") == ["r1"]
    assert await ids(storage, "50_") == []
    assert await ids(storage, "f\\\\n") == ["r1"]


async def test_both_backends_find_the_same_runs(pg_url: str, tmp_path: Path) -> None:
    """SQLite's FTS5 trigram phrase and PostgreSQL's escaped trigram ILIKE are one semantics:
    random documents and queries (quotes, LIKE wildcards, backslashes, mixed case) give the
    same runs on both."""
    rng = random.Random(20)
    alphabet = "abcAB%_\\\"' -1"

    def text(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    docs = [(f"r{i}", {"v": text(12)}, text(6)) for i in range(40)]
    queries = [text(rng.randint(3, 5)) for _ in range(100)]
    for _, doc, meta in rng.choices(docs, k=100):  # substrings of stored documents: hits
        s = orjson.dumps(doc).decode() + orjson.dumps(meta).decode()  # as stored
        at = rng.randint(0, len(s) - 3)
        queries.append(s[at : at + rng.randint(3, 5)])
    found: list[list[list[str]]] = []
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as lite, \
            st.PostgresStorage.open(pg_url) as pg_s:
        for s in (lite, pg_s):
            for i, (run_id, doc, meta) in enumerate(docs):
                await make_run(s, run_id, input=doc, created_at=float(i))
                await s.execute(st.ApplyMetadata(run_id, run_id, 0, st.MetadataOpKind.SET,
                                                 "m", meta))
            found.append([await ids(s, q, limit=None) for q in queries])
    assert found[0] == found[1]
    assert sum(1 for hit in found[0] if hit) > 100  # the comparison is not vacuous


def parts(conn: sqlite3.Connection) -> dict[int, str]:
    """The SQLite index's documents as stored (rowid -> text)."""
    return dict(conn.execute("SELECT rowid, body FROM run_search"))


def expected(conn: sqlite3.Connection) -> dict[int, str]:
    """The documents the rows say the index holds (migration 0015's views)."""
    got: dict[int, str] = {}
    for view in ("run_search_head", "run_search_result", "run_search_metadata"):
        got.update(conn.execute(f"SELECT doc, body FROM {view} WHERE body IS NOT NULL"))
    return got


async def test_sqlite_index_parts_follow_a_runs_result_through_retry(tmp_path: Path) -> None:
    """Migration 0015's documents per run (head, result, metadata) are exactly what the rows
    say after each write path that sets, changes or clears a result, and FTS5 agrees."""

    path = tmp_path / "wf.db"
    async with st.SQLiteStorage.open(path) as storage:
        conn = sqlite3.connect(path)
        try:
            await make_run(storage, "r", input={"v": "head-text"}, created_at=1.0)
            await make_run(storage, "q", input={"v": "other"}, created_at=1.5)
            assert parts(conn) == expected(conn) and len(parts(conn)) == 2
            await storage.execute(st.UpdateRun("r", at=2.0, status=st.RunStatus.FAILED,
                                               error={"code": "FIRST-ERROR"}))
            assert parts(conn) == expected(conn) and await ids(storage, "FIRST-ERR") == ["r"]
            await storage.execute(st.RetryRun("r", 3.0, "retrigger"))
            assert parts(conn) == expected(conn) and await ids(storage, "FIRST-ERR") == []
            await storage.execute(st.UpdateRun("r", at=4.0, status=st.RunStatus.COMPLETED,
                                               output="final-output"))
            await storage.execute(st.ApplyMetadata("r", "r", 0, st.MetadataOpKind.SET, "k",
                                                   "meta-value"))
            assert parts(conn) == expected(conn)
            assert await ids(storage, "final-out") == ["r"]
            assert await ids(storage, "meta-val") == ["r"]
            assert await ids(storage, "head-text") == ["r"]
            conn.execute("INSERT INTO run_search(run_search) VALUES('integrity-check')")
        finally:
            conn.close()


async def test_sqlite_documents_of_one_batch_are_written_before_its_commit(
    tmp_path: Path,
) -> None:
    """Migration 0016: the triggers only note changed documents and the writer writes them
    at the end of the batch's transaction. Many callers in one batch, one of them refused
    (its savepoint rolled back with the documents it noted): at every commit the index is
    exactly what the rows say and nothing is left noted."""

    path = tmp_path / "wf.db"
    async with st.SQLiteStorage.open(path) as storage:
        conn = sqlite3.connect(path)
        try:
            await make_run(storage, "dup", input={"v": "first-input"}, created_at=0.5)
            results = await asyncio.gather(
                *(make_run(storage, f"r{i}", input={"v": f"in-{i:03d}"}, created_at=1.0 + i)
                  for i in range(40)),
                storage.commit([st.CreateRun(run_id="doomed", workflow_id="wf",
                                             input={"v": "second-input"}, created_at=2.0),
                                st.UpdateRun("missing", at=2.0, status=st.RunStatus.RUNNING)]),
                return_exceptions=True,
            )
            assert [type(r) for r in results].count(st.NotFound) == 1, results
            assert conn.execute("SELECT count(*) FROM search_backlog").fetchone() == (0,)
            assert parts(conn) == expected(conn) and len(parts(conn)) == 41
            assert await ids(storage, "second-input") == []
            await asyncio.gather(*(
                storage.execute(st.UpdateRun(f"r{i}", at=50.0, status=st.RunStatus.COMPLETED,
                                             output=f"out-{i:03d}")) for i in range(40)))
            await storage.execute(st.ApplyMetadata("r7", "r7", 0, st.MetadataOpKind.SET, "k",
                                                   "meta-seven"))
            assert conn.execute("SELECT count(*) FROM search_backlog").fetchone() == (0,)
            assert parts(conn) == expected(conn) and len(parts(conn)) == 82
            assert await ids(storage, "out-017") == ["r17"]
            assert await ids(storage, "meta-seven") == ["r7"]
            # A transaction that did not go through the writer leaves its documents noted:
            # the writer's next batch writes them.
            conn.execute("UPDATE runs SET output = '\"planted-output\"' WHERE run_id = 'r3'")
            conn.commit()
            assert await ids(storage, "planted-out") == []
            await make_run(storage, "later", created_at=60.0)
            assert await ids(storage, "planted-out") == ["r3"]
            assert parts(conn) == expected(conn)
            conn.execute("INSERT INTO run_search(run_search) VALUES('integrity-check')")
        finally:
            conn.close()
