"""The run-wide journal sequence number (SPEC §3, migration 0007): every entry a run records
takes the run's next number, whatever write path records it, and the migration numbers the
journals written before it in time order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

import storage as st
from storage.postgres import schema as pg_schema
from storage.sqlite import schema
from tests import pg
from tests.storage.conftest import make_run

DONE, FAILED = st.StepStatus.COMPLETED, st.StepStatus.FAILED
DATETIME = st.WaitpointKind.DATETIME


async def test_every_entry_takes_the_runs_next_number(storage: st.Storage) -> None:
    s = storage
    await make_run(s, "r1")
    await make_run(s, "r2")  # its own numbering
    await s.execute(st.RecordStepAttempt("r2", "other", 1, DONE, finished_at=1.0))
    await s.execute(st.RecordStepAttempt("r1", "a", 1, DONE, finished_at=1.0))  # 1
    await s.execute(st.RecordStepAttempt("r1", "b", 1, FAILED, position=1,
                                         finished_at=2.0, retry_at=3.0))  # 2
    await s.execute(st.RegisterWaitpoint("r1", "sleep:0", DATETIME, 4.0,
                                         due_at=5.0))  # 3
    await s.execute(st.ResolveWaitpoint("r1", "sleep:0", 5.0,
                                        st.ResolutionSource.LIVE))  # 4
    await s.execute(st.RecordStepAttempt("r1", "b", 2, DONE, position=1,
                                         finished_at=6.0))  # 5
    await s.execute(st.RecordStepAttempt("r1", "b", 2, DONE, position=1,
                                         finished_at=6.0))  # the same attempt again: 5
    await s.execute(st.AppendStreamChunk("r1", "out", 0, "text", "x", True, 7.0))  # 6
    await s.execute(st.RecordCompensation("r1", "a", st.CompensationStatus.COMPLETED,
                                          8.0))  # 7
    journal = await s.load_journal("r1")
    seqs = {(a.step_id, a.attempt): a.journal_seq for a in journal.attempts}
    assert seqs == {("a", 1): 1, ("b", 1): 2, ("b", 2): 5}
    (wp,) = journal.waitpoints
    assert (wp.journal_seq, wp.resolved_journal_seq) == (3, 4)
    assert journal.stream_chunks[0].journal_seq == 6
    assert journal.compensations[0].journal_seq == 7


async def test_the_migration_numbers_existing_journals_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    schema.migrate(conn, str(path), target=6)
    conn.execute("INSERT INTO runs (number, run_id, workflow_id, status, created_at, updated_at) "
                 "VALUES (1, 'r1', 'wf', 'waiting', 0, 0)")
    conn.execute("INSERT INTO step_attempts (run_no, step_id, attempt, status, finished_at, "
                 "retry_at) VALUES (1, 'b', 1, 'failed', 3.0, 4.0)")
    conn.execute("INSERT INTO steps (run_no, step_id, position, attempt, status, finished_at) "
                 "VALUES (1, 'a', 0, 1, 'completed', 1.0), (1, 'b', 1, 2, 'completed', 5.0)")
    conn.execute("INSERT INTO waitpoints (run_id, wp_id, kind, status, registered_at, "
                 "resolved_at) VALUES ('r1', 'sleep:0', 'DATETIME', 'resolved', 2.0, 2.5), "
                 "('r1', 'event:x:0', 'EVENT', 'waiting', 6.0, NULL)")
    schema.migrate(conn, str(path), target=7)
    assert conn.execute("SELECT journal_seq FROM runs").fetchone() == (6,)
    conn.close()
    async with st.SQLiteStorage.open(path) as s:
        await s.execute(st.RecordStepAttempt("r1", "c", 1, DONE, position=2, finished_at=7.0))
        journal = await s.load_journal("r1")
    seqs = {(a.step_id, a.attempt): a.journal_seq for a in journal.attempts}
    assert seqs == {("a", 1): 1, ("b", 1): 4, ("b", 2): 5, ("c", 1): 7}
    wps = {w.wp_id: (w.journal_seq, w.resolved_journal_seq) for w in journal.waitpoints}
    assert wps == {"sleep:0": (2, 3), "event:x:0": (6, None)}


async def test_the_postgres_migration_numbers_existing_journals_alike(
    pg_cluster: pg.Cluster,
) -> None:
    """The PostgreSQL twin of 0007 numbers the same journal the same way."""
    url = await pg.create_database(pg_cluster, migrated=False)
    try:
        conn = await asyncpg.connect(url)
        try:
            await pg_schema.migrate(conn, "test", target=6)
            await conn.execute(
                "INSERT INTO runs (number, run_id, workflow_id, status, created_at, updated_at) "
                "VALUES (1, 'r1', 'wf', 'waiting', 0, 0)")
            await conn.execute(
                "INSERT INTO step_attempts (run_no, step_id, attempt, status, finished_at, "
                "retry_at) VALUES (1, 'b', 1, 'failed', 3.0, 4.0)")
            await conn.execute(
                "INSERT INTO steps (run_no, step_id, position, attempt, status, finished_at) "
                "VALUES (1, 'a', 0, 1, 'completed', 1.0), (1, 'b', 1, 2, 'completed', 5.0)")
            await conn.execute(
                "INSERT INTO waitpoints (run_id, wp_id, kind, status, registered_at, "
                "resolved_at) VALUES ('r1', 'sleep:0', 'DATETIME', 'resolved', 2.0, 2.5), "
                "('r1', 'event:x:0', 'EVENT', 'waiting', 6.0, NULL)")
            await conn.execute("SELECT setval(pg_get_serial_sequence('runs', 'number'), 1)")
            await pg_schema.migrate(conn, "test", target=7)
            assert await conn.fetchval("SELECT journal_seq FROM runs") == 6
        finally:
            await conn.close()
        async with st.PostgresStorage.open(url) as s:
            await s.execute(st.RecordStepAttempt("r1", "c", 1, DONE, position=2,
                                                 finished_at=7.0))
            journal = await s.load_journal("r1")
        seqs = {(a.step_id, a.attempt): a.journal_seq for a in journal.attempts}
        assert seqs == {("a", 1): 1, ("b", 1): 4, ("b", 2): 5, ("c", 1): 7}
        wps = {w.wp_id: (w.journal_seq, w.resolved_journal_seq) for w in journal.waitpoints}
        assert wps == {"sleep:0": (2, 3), "event:x:0": (6, None)}
    finally:
        await pg.drop_database(pg_cluster, url)
