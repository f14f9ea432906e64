"""SQLite-specific behaviour: group commit, schema versions, query plans, files, disk full."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

import storage as st
from storage.sqlite import schema
from storage.sqlite.storage import (
    DUE_TIMERS_SQL,
    INBOX_SQL,
    NEXT_TIMER_SQL,
    WAITING_FOR_EVENT_SQL,
    list_runs_query,
    recent_events_query,
)
from tests.storage.conftest import make_run

DONE = st.StepStatus.COMPLETED


async def test_concurrent_callers_share_transactions_and_all_commit(tmp_path: Path) -> None:
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as s:
        await s.commit([st.CreateRun(f"r{i}", "wf", 1.0) for i in range(50)])
        before = s.stats()
        await asyncio.gather(*(
            s.execute(st.RecordStepAttempt(f"r{i}", f"s{k}", 1, DONE, position=k, output=k))
            for i in range(50) for k in range(10)
        ))
        after = s.stats()
        assert after.requests - before.requests == 500
        assert after.batches - before.batches < 500  # grouped
        journal = await s.load_journal("r7")
        assert [step.output for step in journal.steps] == list(range(10))


async def test_one_callers_failure_does_not_fail_the_others_in_its_batch(tmp_path: Path) -> None:
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as s:
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


async def test_reads_do_not_wait_behind_a_long_batch(tmp_path: Path) -> None:
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as s:
        await make_run(s, "r1")
        big = [st.AppendStreamChunk("r1", "x", i, "text", "y" * 200, False, 1.0)
               for i in range(60_000)]
        writing = asyncio.ensure_future(s.commit(big))
        await asyncio.sleep(0.01)
        run = await s.get_run("r1")  # served from the last commit while the batch runs
        assert run is not None
        assert not writing.done()
        await writing
        assert len(await s.stream_chunks("r1", "x", limit=5)) == 5


async def test_commit_after_close_raises_storage_closed(tmp_path: Path) -> None:
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as s:
        pass
    with pytest.raises(st.StorageClosed):
        await s.commit([st.CreateRun("r", "wf", 1.0)])


async def test_database_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "wf.db"
    async with st.SQLiteStorage.open(path) as s:
        await make_run(s, "r1")
        for suffix in ("", "-wal", "-shm"):
            mode = stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)
            assert mode == 0o600, (suffix, oct(mode))


async def test_synchronous_setting_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        async with st.SQLiteStorage.open(tmp_path / "wf.db", synchronous="off"):  # type: ignore[arg-type]
            pass


def _schema_dump(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master "
                                   "WHERE name NOT LIKE 'sqlite_%'").fetchall())
    finally:
        conn.close()


async def test_migrating_step_by_step_equals_a_fresh_database(tmp_path: Path) -> None:
    stepwise = tmp_path / "old.db"
    conn = sqlite3.connect(stepwise, isolation_level=None)
    for version in range(1, schema.latest_version() + 1):
        assert schema.migrate(conn, str(stepwise), target=version) == version
        assert schema.user_version(conn) == version
    conn.close()
    async with st.SQLiteStorage.open(stepwise) as s:  # opening an up-to-date file is a no-op
        await make_run(s, "r1")
    async with st.SQLiteStorage.open(tmp_path / "fresh.db"):
        pass
    assert _schema_dump(stepwise) == _schema_dump(tmp_path / "fresh.db")


async def test_database_from_a_newer_build_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wf.db"
    async with st.SQLiteStorage.open(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.commit()
    conn.close()
    with pytest.raises(st.SchemaTooNew) as err:
        async with st.SQLiteStorage.open(path):
            pass
    assert "999" in str(err.value) and str(schema.latest_version()) in str(err.value)
    assert (err.value.found, err.value.known) == (999, schema.latest_version())


HOT_QUERIES = {
    "due timers": (DUE_TIMERS_SQL, (1.0, 10)),
    "next timer": (NEXT_TIMER_SQL, ()),
    "waiting by event type": (WAITING_FOR_EVENT_SQL, ("t",)),
    "inbox by run and name": (INBOX_SQL, ("r", "n")),
    "runs by status": list_runs_query(status=st.RunStatus.WAITING, workflow_id=None, tag=None,
                                      limit=10),
    "runs by workflow": list_runs_query(status=None, workflow_id="w", tag=None, limit=10),
    "runs by tag": list_runs_query(status=None, workflow_id=None, tag="t", limit=10),
    "runs newest first": list_runs_query(status=None, workflow_id=None, tag=None, limit=10),
    "non-terminal runs": ("SELECT run_id FROM runs WHERE status IN ('pending', 'running')", ()),
    "token by id": ("SELECT run_id FROM tokens WHERE token_id = ?", ("t",)),
    "run by id": ("SELECT status FROM runs WHERE run_id = ?", ("r",)),
    "steps of a run": ("SELECT s.step_id FROM steps s JOIN runs r ON r.number = s.run_no "
                       "WHERE r.run_id = ?", ("r",)),
    "waitpoint timers": ("DELETE FROM timers WHERE run_id = ? AND wp_id = ?", ("r", "w")),
    "signal waiters": ("SELECT wp_id FROM waitpoints WHERE run_id = ? AND signal_name = ? "
                       "AND status = 'waiting'", ("r", "n")),
    "recent events": recent_events_query(type=None, before=None, limit=50),
    "recent events of a type": recent_events_query(type="t", before=2.0, limit=50),
    "what an event resolved": ("SELECT run_id, wp_id FROM waitpoints WHERE matched_event_id "
                               "IN (?, ?)", ("e1", "e2")),
    "lookback events": ("SELECT event_id FROM events WHERE type = ? AND received_at >= ? "
                        "ORDER BY received_at", ("t", 1.0)),
}


@pytest.mark.parametrize("name", sorted(HOT_QUERIES))
async def test_hot_query_is_an_index_lookup(tmp_path: Path, name: str) -> None:
    path = tmp_path / "wf.db"
    async with st.SQLiteStorage.open(path):
        pass
    sql, params = HOT_QUERIES[name]
    conn = sqlite3.connect(path)
    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", tuple(params))]
    conn.close()
    scans = [p for p in plan if p.startswith("SCAN ") and " USING " not in p]
    assert not scans, f"{name}: full table scan in {plan}"


async def test_disk_full_fails_the_batch_keeps_data_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "wf.db"
    # A little above what the schema needs (66 pages with 0012's table and indexes).
    async with st.SQLiteStorage.open(path, max_page_count=96) as s:
        await make_run(s, "r1")
        acked: list[int] = []
        with pytest.raises(st.StorageFull) as err:
            for i in range(10_000):
                await s.execute(st.AppendStreamChunk("r1", "x", i, "text", "z" * 2000, False, 1.0))
                acked.append(i)
        assert err.value.code == "STORAGE_FULL"
        assert isinstance(err.value.__cause__, sqlite3.Error)
        assert acked, "some writes fit before the limit"
        chunks = await s.stream_chunks("r1", "x")
        assert [c.seq for c in chunks] == acked
        await s.set_max_page_count(100_000)  # space returns
        assert await s.execute(st.AppendStreamChunk("r1", "x", len(acked), "text", "z", True, 2.0))
    async with st.SQLiteStorage.open(path) as s:
        assert len(await s.stream_chunks("r1", "x")) == len(acked) + 1
