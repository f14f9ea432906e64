"""PostgreSQL-specific behaviour: group commit isolation, schema versions, the daemon lock."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

import storage as st
from storage.postgres import schema
from tests import pg
from tests.storage.conftest import make_run

DONE = st.StepStatus.COMPLETED


async def test_concurrent_callers_share_transactions_and_all_commit(pg_url: str) -> None:
    async with st.PostgresStorage.open(pg_url) as s:
        await s.commit([st.CreateRun(f"r{i}", "wf", 1.0) for i in range(20)])
        before = s.stats()
        await asyncio.gather(*(
            s.execute(st.RecordStepAttempt(f"r{i}", f"s{k}", 1, DONE, position=k, output=k))
            for i in range(20) for k in range(10)
        ))
        after = s.stats()
        assert after.requests - before.requests == 200
        assert after.batches - before.batches < 200  # grouped
        journal = await s.load_journal("r7")
        assert [step.output for step in journal.steps] == list(range(10))


async def test_one_callers_failure_does_not_fail_the_others_in_its_batch(pg_url: str) -> None:
    async with st.PostgresStorage.open(pg_url) as s:
        await make_run(s, "r1")
        ops: list[list[st.WriteOp[object]]] = []
        for i in range(20):
            ops.append([st.RecordStepAttempt("r1", f"ok{i}", 1, DONE)])
            ops.append([st.RecordStepAttempt("r1", f"bad{i}-a", 1, DONE),
                        st.RecordStepAttempt("ghost", f"bad{i}", 1, DONE)])
        results = await asyncio.gather(*(s.commit(b) for b in ops), return_exceptions=True)
        assert all(r == [None] for r in results[0::2])
        assert all(isinstance(r, st.NotFound) for r in results[1::2])
        steps = {step.step_id for step in (await s.load_journal("r1")).steps}
        assert steps == {f"ok{i}" for i in range(20)}  # no half of a failed caller's batch
        assert s.stats().replayed_batches >= 1


async def test_a_fresh_database_is_migrated_and_reports_its_capabilities(
    pg_cluster: pg.Cluster,
) -> None:
    url = await pg.create_database(pg_cluster, migrated=False)
    try:
        async with st.PostgresStorage.open(url) as s:
            caps = s.capabilities()
            assert (caps.backend, caps.many_daemons) == ("postgres", False)
            assert s.durability()["synchronous_commit"] == "on"
            await make_run(s, "r1")
        conn = await asyncpg.connect(url)
        try:
            assert await schema.schema_version(conn) == schema.latest_version()
        finally:
            await conn.close()
    finally:
        await pg.drop_database(pg_cluster, url)


async def test_database_from_a_newer_build_is_refused(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE wf_schema SET version = $1", schema.latest_version() + 1)
    finally:
        await conn.close()
    with pytest.raises(st.SchemaTooNew):
        async with st.PostgresStorage.open(pg_url):
            pass


async def test_a_second_daemon_on_the_same_database_is_refused(pg_url: str) -> None:
    async with st.PostgresStorage.open(pg_url) as first:
        with pytest.raises(st.StorageLocked, match="in use by another daemon"):
            async with st.PostgresStorage.open(pg_url):
                pass
        await make_run(first, "r1")  # the first is unaffected
    async with st.PostgresStorage.open(pg_url) as again:  # released on close
        assert await again.get_run("r1") is not None


async def test_commit_after_close_raises_storage_closed(pg_url: str) -> None:
    async with st.PostgresStorage.open(pg_url) as s:
        pass
    with pytest.raises(st.StorageClosed):
        await make_run(s, "r1")


async def test_the_url_password_never_appears_in_errors() -> None:
    from storage.postgres.storage import redact

    assert redact("postgresql://wf:s3cret@db:5432/wf") == "postgresql://wf:***@db:5432/wf"


def test_postgres_migrations_are_the_twins_of_sqlites() -> None:
    """A SQLite migration NNNN needs its PostgreSQL twin NNNN (same number and name)."""
    from storage.sqlite import schema as sqlite_schema

    assert [(m.version, m.name) for m in schema.migrations()] == [
        (m.version, m.name) for m in sqlite_schema.migrations()
    ]


async def test_every_table_has_the_same_columns_on_both_backends(
    pg_url: str, tmp_path: Path
) -> None:
    async with st.SQLiteStorage.open(tmp_path / "wf.db"):
        pass
    lite = sqlite3.connect(tmp_path / "wf.db")
    try:
        tables = [n for (n,) in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND sql NOT LIKE 'CREATE VIRTUAL%' AND name NOT LIKE 'run\\_search\\_%' ESCAPE '\\' "
            "AND name <> 'search_backlog'")]
        on_sqlite = {t: sorted(r[1] for r in lite.execute(f"PRAGMA table_info({t})"))
                     for t in tables}
    finally:
        lite.close()
    conn = await asyncpg.connect(pg_url)
    try:
        found = await conn.fetch(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' "
            "AND c.table_name NOT IN ('wf_schema', 'run_search')")
    finally:
        await conn.close()
    # run_search is each backend's own search index (an FTS5 virtual table on SQLite, a
    # pg_trgm-indexed table on PostgreSQL), skipped on both sides; so is SQLite's list of the
    # documents a transaction changed (search_backlog, migration 0016).
    on_pg: dict[str, list[str]] = {}
    for table, column in found:
        if (table, column) != ("waitpoints", "rowid"):  # SQLite's implicit rowid, made explicit
            on_pg.setdefault(table, []).append(column)
    assert {t: sorted(c) for t, c in on_pg.items()} == on_sqlite


async def test_search_is_served_by_the_trigram_index(pg_url: str) -> None:
    """The GIN trigram index can serve ``list_runs(search=)``'s escaped ILIKE (the operator
    class matches the predicate). With plain scans off, so the planner shows whether it could;
    on a table this small it would rightly scan."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO runs (run_id, workflow_id, status, input, created_at, updated_at) "
            "SELECT 'run-' || i, 'wf', 'completed', '{\"customer\": \"c' || i || '\"}', i, i "
            "FROM generate_series(1, 2000) AS i")
        await conn.execute("ANALYZE")
        await conn.execute("SET enable_seqscan = off; SET enable_indexscan = off")
        from storage.postgres.dialect import to_postgres
        from storage.postgres.search import trigram_search
        from storage.sqlite.storage import list_runs_query

        sql, params = list_runs_query(status=None, workflow_id=None, tag=None, limit=100,
                                      search="c_1%2", search_clause=trigram_search)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + to_postgres(sql), *params))
    finally:
        await conn.close()
    assert "run_search_body" in plan, plan
    async with st.PostgresStorage.open(pg_url) as s:
        assert [r.run_id for r in await s.list_runs(search="c1242")] == ["run-1242"]


async def test_every_index_has_its_twin(pg_url: str, tmp_path: Path) -> None:
    """The same named indexes (not those backing keys) on both backends, so a query plan
    SQLite relies on has its index on PostgreSQL too; the search indexes are each their own."""
    async with st.SQLiteStorage.open(tmp_path / "wf.db"):
        pass
    lite = sqlite3.connect(tmp_path / "wf.db")
    try:
        on_sqlite = {n for (n,) in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        lite.close()
    conn = await asyncpg.connect(pg_url)
    try:
        on_pg = {r[0] for r in await conn.fetch(
            "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)")}
    finally:
        await conn.close()
    assert on_pg - {"run_search_body"} == on_sqlite


async def test_a_lost_session_is_transient_and_the_writer_reconnects(pg_url: str) -> None:
    """pg_terminate_backend (or a server restart) under a write: the caller gets STORAGE_BUSY,
    which the engine retries, not a plain storage error it would fail the run with (issue 20:
    the crash campaign's database restart showed a daemon's timer task dying of it)."""
    async with st.PostgresStorage.open(pg_url) as s:
        await make_run(s, "r1")
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            with pytest.raises(st.StorageBusy, match="storage unavailable"):
                await s.execute(st.RecordStepAttempt("r1", "a", 1, DONE))
        finally:
            await admin.close()
        await s.execute(st.RecordStepAttempt("r1", "b", 1, DONE))  # a new session
        assert [x.step_id for x in (await s.load_journal("r1")).steps] == ["b"]
async def test_run_updates_of_many_callers_are_written_together_and_in_order(
    pg_url: str,
) -> None:
    """The PostgreSQL writer writes the run updates of a batch's callers set-based (issue 20
    performance): each still does what ``UpdateRun`` alone does (needs_resume cleared by
    ``running``, an ended run's waits cancelled and timers dropped, compute added), a missing
    run fails only its caller, and a resolution after a ``running`` update in the same batch
    keeps its needs_resume."""
    running, done = st.RunStatus.RUNNING, st.RunStatus.COMPLETED
    async with st.PostgresStorage.open(pg_url) as s:
        for i in range(6):
            await s.create_run(st.CreateRun(run_id=f"r{i}", workflow_id="wf",
                                            created_at=1.0))
        await s.execute(st.RegisterWaitpoint("r2", "sleep:0", st.WaitpointKind.DATETIME, 2.0,
                                             due_at=99.0))
        await s.execute(st.RegisterWaitpoint("r3", "sleep:0", st.WaitpointKind.DATETIME, 2.0,
                                             due_at=99.0))
        results = await asyncio.gather(
            s.commit([st.UpdateRun("r0", 3.0, status=running, started_at=3.0),
                      st.RecordStepAttempt("r0", "a", 1, st.StepStatus.COMPLETED),
                      st.UpdateRun("r0", 4.0, status=done, output={"x": 1},
                                   finished_at=4.0, add_compute_seconds=0.5)]),
            s.commit([st.UpdateRun("r1", 3.0, status=running, started_at=3.0)]),
            s.commit([st.UpdateRun("r2", 3.0, status=st.RunStatus.FAILED,
                                   error={"code": "X"}, finished_at=3.0)]),
            s.commit([st.UpdateRun("r3", 3.0, status=running, started_at=3.0)]),
            s.commit([st.ResolveWaitpoint("r3", "sleep:0", 3.5, st.ResolutionSource.LIVE)]),
            s.commit([st.UpdateRun("r4", 3.0, priority=7, attempt=2, diverged=True,
                                   recoveries=1)]),
        )
        assert results == [[None, None, None], [None], [None], [None], [True], [None]]
        assert s.stats().replayed_batches == 0  # written set-based, not op by op
        missing, ok = await asyncio.gather(
            s.commit([st.UpdateRun("nope", 3.0, status=running)]),
            s.commit([st.UpdateRun("r5", 5.0, priority=3)]), return_exceptions=True)
        assert isinstance(missing, st.NotFound) and ok == [None]
        r0, r1, r2, r3, r4, r5 = [await s.get_run(f"r{i}") for i in range(6)]
        assert r0 is not None and r0.status is done and r0.output == {"x": 1}
        assert r0.started_at == 3.0 and r0.finished_at == 4.0 and r0.compute_seconds == 0.5
        assert r1 is not None and r1.status is running and r1.updated_at == 3.0
        assert r2 is not None and r2.status is st.RunStatus.FAILED and r2.error == {"code": "X"}
        (wp,) = (await s.load_journal("r2")).waitpoints
        assert wp.status is st.WaitpointStatus.CANCELLED
        assert r4 is not None and (r4.priority, r4.attempt, r4.diverged, r4.recoveries) == (
            7, 2, True, 1)
        assert r5 is not None and r5.status is st.RunStatus.PENDING and r5.priority == 3
        # The resolution came after r3's `running` in the batch: r3 still needs its resume.
        assert r3 is not None and r3.status is running
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT needs_resume FROM runs WHERE run_id = 'r3'") == 1
        assert await conn.fetchval("SELECT count(*) FROM timers WHERE run_id = 'r2'") == 0
    finally:
        await conn.close()
