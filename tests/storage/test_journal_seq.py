"""The run-wide journal sequence number (SPEC §3, migration 0007): every entry a run records
takes the run's next number, whatever write path records it, and the migration numbers the
journals written before it in time order."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

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


def _step(run_id: str, step_id: str, attempt: int = 1, at: float = 1.0) -> st.RecordStepAttempt:
    return st.RecordStepAttempt(run_id, step_id, attempt, DONE, finished_at=at)


async def _seqs(s: st.Storage, run_id: str) -> dict[str, int | None]:
    journal = await s.load_journal(run_id)
    found: dict[str, int | None] = {
        f"{a.step_id}#{a.attempt}": a.journal_seq for a in journal.attempts}
    for wp in journal.waitpoints:
        found[wp.wp_id] = wp.journal_seq
        if wp.resolved_journal_seq is not None:
            found[f"{wp.wp_id}!"] = wp.resolved_journal_seq
    return found


async def test_a_batch_numbers_one_run_many_times_in_order(storage: st.Storage) -> None:
    """Migration 0013: the ops number their entries. Many callers in one batch, several on one
    run, coalesced first attempts beside ops applied one by one: dense numbers, in the order
    the entries were written, each run its own."""
    s = storage
    for run_id in ("r1", "r2", "r3"):
        await make_run(s, run_id)
    # One caller, all first attempts (the coalesced path), three on r1 and one on r2.
    await s.commit([_step("r1", "a"), _step("r2", "a"), _step("r1", "b"), _step("r1", "c")])
    # Concurrent callers, most likely one batch: first attempts, a later attempt and a
    # waitpoint, on the same runs.
    await asyncio.gather(
        s.commit([_step("r1", "d"), _step("r3", "a")]),
        s.commit([_step("r2", "b"), _step("r2", "c")]),
        s.commit([st.RegisterWaitpoint("r3", "sleep:0", DATETIME, 2.0, due_at=9.0)]),
    )
    assert await _seqs(s, "r1") == {"a#1": 1, "b#1": 2, "c#1": 3, "d#1": 4}
    r2, r3 = await _seqs(s, "r2"), await _seqs(s, "r3")
    assert r2["a#1"] == 1 and sorted(v for v in r2.values() if v) == [1, 2, 3]
    assert r2["b#1"] is not None and r2["c#1"] is not None and r2["b#1"] < r2["c#1"]
    assert sorted(v for v in r3.values() if v) == [1, 2]
    # A coalesced caller re-recording an attempt already there falls back to op by op: the
    # repeat takes no number, the new row the next one.
    await s.commit([_step("r1", "a"), _step("r1", "e")])
    await s.commit([_step("r1", "b", attempt=2, at=3.0), _step("r1", "b", attempt=2, at=3.0)])
    await s.execute(st.ResolveWaitpoint("r3", "sleep:0", 9.0, st.ResolutionSource.LIVE))
    await s.execute(st.ResolveWaitpoint("r3", "sleep:0", 9.5, st.ResolutionSource.LIVE))
    r1 = await _seqs(s, "r1")
    assert r1 == {"a#1": 1, "b#1": 2, "c#1": 3, "d#1": 4, "e#1": 5, "b#2": 6}
    assert (await _seqs(s, "r3"))["sleep:0!"] == 3
    assert (await s.get_run("r1")) is not None
    await s.execute(st.AppendStreamChunk("r1", "out", 0, "text", "x", True, 7.0))
    await s.execute(st.AppendStreamChunk("r1", "out", 0, "text", "x", True, 7.0))  # ignored
    await s.execute(_step("r1", "f"))
    assert (await _seqs(s, "r1"))["f#1"] == 8


async def test_a_missing_run_fails_only_its_caller_in_a_coalesced_batch(
    storage: st.Storage,
) -> None:
    s = storage
    await make_run(s, "r1")
    ok, missing = await asyncio.gather(
        s.commit([_step("r1", "a")]), s.commit([_step("nope", "a")]), return_exceptions=True)
    assert ok == [None]
    assert isinstance(missing, st.NotFound)
    await s.execute(_step("r1", "b"))
    assert await _seqs(s, "r1") == {"a#1": 1, "b#1": 2}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_numbers_continue_across_a_restart(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    cluster: pg.Cluster | None = None
    url = ""
    if backend == "postgres":
        cluster = request.getfixturevalue("pg_cluster")
        url = await pg.create_database(cluster)

    def opened() -> Any:
        if cluster is not None:
            return st.PostgresStorage.open(url)
        return st.SQLiteStorage.open(tmp_path / "wf.db")

    try:
        async with opened() as s:
            await make_run(s, "r1")
            await s.commit([_step("r1", "a"), _step("r1", "b")])
            await s.execute(st.RegisterWaitpoint("r1", "sleep:0", DATETIME, 2.0, due_at=9.0))
        async with opened() as s:
            await s.commit([_step("r1", "c")])
            await s.execute(st.ResolveWaitpoint("r1", "sleep:0", 9.0,
                                                st.ResolutionSource.LIVE))
            assert await _seqs(s, "r1") == {
                "a#1": 1, "b#1": 2, "sleep:0": 3, "c#1": 4, "sleep:0!": 5}
            run = await s.get_run("r1")
            assert run is not None
    finally:
        if cluster is not None:
            await pg.drop_database(cluster, url)
