"""Retention (SPEC §12): ``PruneRuns`` deletes ended run trees with every row they own, never a
live run nor a child without its root; ``PruneEvents``; incremental vacuum on new files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import storage as st
from tests.storage.conftest import Raw, deep_subset, make_run, raw

ENDED = (st.RunStatus.COMPLETED, st.RunStatus.FAILED, st.RunStatus.CANCELLED)


async def fill_every_table(db: Raw, run_id: str) -> None:
    """One row owned by ``run_id`` in every table that holds run rows."""
    ((no,),) = await db.fetch("SELECT number FROM runs WHERE run_id = ?", (run_id,))
    x = (run_id,)
    await db.execute("INSERT INTO run_tags (run_id, tag, created_at) VALUES (?, 'tag', 1)", x)
    await db.execute("INSERT INTO steps (run_no, step_id, position, attempt, status) "
                     "VALUES (?, 's', 0, 2, 'completed')", (no,))
    await db.execute("INSERT INTO step_attempts (run_no, step_id, attempt, status) "
                     "VALUES (?, 's', 1, 'failed')", (no,))
    await db.execute("INSERT INTO waitpoints (run_id, wp_id, kind, status, registered_at) "
                     "VALUES (?, 'w', 'token', 'resolved', 1)", x)
    await db.execute("INSERT INTO tokens (token_id, run_id, wp_id, created_at) "
                     "VALUES (?, ?, 'w', 1)", (f"{run_id}-tok", run_id))
    await db.execute("INSERT INTO signal_inbox (run_id, name, sent_at) VALUES (?, 'n', 1)", x)
    await db.execute("INSERT INTO timers (timer_id, kind, due_at, run_id, wp_id, created_at) "
                     "VALUES (?, 'wake', 9e9, ?, 'w', 1)", (f"{run_id}-t", run_id))
    await db.execute("INSERT INTO stream_chunks (run_id, stream_id, seq, encoding, final, at) "
                     "VALUES (?, 'out', 0, 'json', 1, 1)", x)
    await db.execute("INSERT INTO metadata (run_id, key, value) VALUES (?, 'k', '1')", x)
    await db.execute("INSERT INTO metadata_cursor (origin_run_id, last_op_index) "
                     "VALUES (?, 0)", x)
    await db.execute("INSERT INTO compensations (run_id, step_id, seq, status, finished_at) "
                     "VALUES (?, 's', 0, 'completed', 1)", x)
    await db.execute("INSERT INTO run_cancel_on (run_id, rule, event_type, wildcard, "
                     "compensate) VALUES (?, 0, 'e', 0, 0)", x)
    await db.execute("INSERT INTO run_archive (run_id, seq, attempt, mode, archived_at, status, "
                     "journal) VALUES (?, 0, 1, 'retrigger', 1, 'failed', '[]')", x)


async def rows_of(db: Raw, run_id: str) -> dict[str, int]:
    """Rows that still refer to ``run_id`` in any table, found from the schema itself so a
    table added later is checked too."""
    number = await db.fetch("SELECT number FROM runs WHERE run_id = ?", (run_id,))
    left: dict[str, int] = {}
    for table, cols in (await db.tables()).items():
        for col in ("run_id", "origin_run_id", "parent_run_id", "root_run_id"):
            if col in cols:
                ((n,),) = await db.fetch(f"SELECT count(*) FROM {table} WHERE {col} = ?",
                                         (run_id,))
                if n:
                    left[f"{table}.{col}"] = n
        if "run_no" in cols and number:
            ((n,),) = await db.fetch(f"SELECT count(*) FROM {table} WHERE run_no = ?", number[0])
            if n:
                left[f"{table}.run_no"] = n
    return left


async def end(storage: st.Storage, run_id: str, status: st.RunStatus, at: float) -> None:
    await storage.execute(st.UpdateRun(run_id, at=at, status=status, finished_at=at))


async def test_prune_deletes_ended_trees_with_every_row_and_spares_live_runs(
    storage: st.Storage,
) -> None:
    await make_run(storage, "done", created_at=1.0, input={"needle": "gone-soon"})
    await end(storage, "done", st.RunStatus.COMPLETED, 2.0)
    # A tree: root ended, child and grandchild ended -> goes whole.
    await make_run(storage, "root", created_at=1.0)
    await make_run(storage, "root/c", created_at=1.5, parent_run_id="root",
                   root_run_id="root")
    await make_run(storage, "root/c/g", created_at=1.6, parent_run_id="root/c",
                   root_run_id="root")
    for rid in ("root/c/g", "root/c", "root"):
        await end(storage, rid, st.RunStatus.FAILED, 3.0)
    # A root that ended while a child still waits: stays, and so does its child.
    await make_run(storage, "held", created_at=1.0)
    await make_run(storage, "held/c", created_at=1.1, parent_run_id="held",
                   root_run_id="held")
    await storage.execute(st.UpdateRun("held/c", at=2.0, status=st.RunStatus.WAITING))
    await end(storage, "held", st.RunStatus.CANCELLED, 2.0)
    # An ended child of a live root: never pruned on its own.
    await make_run(storage, "live", created_at=1.0)
    await storage.execute(st.UpdateRun("live", at=2.0, status=st.RunStatus.RUNNING))
    await make_run(storage, "live/c", created_at=1.1, parent_run_id="live",
                   root_run_id="live")
    await end(storage, "live/c", st.RunStatus.COMPLETED, 2.0)
    await make_run(storage, "parked", created_at=1.0)
    await storage.execute(st.UpdateRun("parked", at=2.0, status=st.RunStatus.WAITING))
    await make_run(storage, "recent", created_at=1.0)
    await end(storage, "recent", st.RunStatus.COMPLETED, 50.0)

    all_ids = ["done", "root", "root/c", "root/c/g", "held", "held/c", "live", "live/c",
               "parked", "recent"]
    async with raw(storage) as db:
        for rid in all_ids:
            await fill_every_table(db, rid)

    assert await storage.count_prunable(ENDED, 10.0) == 4
    assert await storage.count_prunable(ENDED, 10.0, workflow_id="other") == 0
    first = await storage.execute(st.PruneRuns(ENDED, 10.0, limit=1))
    second = await storage.execute(st.PruneRuns(ENDED, 10.0, limit=10))
    assert sorted(first + second) == ["done", "root", "root/c", "root/c/g"]
    assert await storage.execute(st.PruneRuns(ENDED, 10.0)) == ()
    assert await storage.count_prunable(ENDED, 10.0) == 0
    assert await storage.list_runs(search="gone-soon") == []
    kept = {r.run_id for r in await storage.list_runs(limit=None)}
    assert kept == {"held", "held/c", "live", "live/c", "parked", "recent"}
    with pytest.raises(ValueError, match="waiting"):
        await storage.execute(st.PruneRuns((st.RunStatus.WAITING,), 10.0))

    async with raw(storage) as db:
        for rid in ("done", "root", "root/c", "root/c/g"):
            assert await rows_of(db, rid) == {}, rid
        for rid in kept:
            assert "metadata.run_id" in await rows_of(db, rid)
        if isinstance(storage, st.SQLiteStorage):  # up to 3 documents per run (0015)
            assert await db.fetch("SELECT count(DISTINCT rowid / 4) FROM run_search") == [
                (len(kept),)]
        else:
            assert await db.fetch("SELECT count(*) FROM run_search") == [(len(kept),)]
        if isinstance(storage, st.SQLiteStorage):
            assert await db.fetch("PRAGMA integrity_check") == [("ok",)]


async def test_a_budgeted_prune_stops_between_trees_and_keeps_children_with_roots(
    storage: st.Storage,
) -> None:
    # A zero budget is spent after the first group of trees: each op deletes a few whole
    # trees (a root with its child, never one without the other), the next op goes on.
    for i in range(6):
        await make_run(storage, f"r{i}", created_at=1.0 + i)
        await make_run(storage, f"r{i}/c", created_at=1.5 + i, parent_run_id=f"r{i}",
                       root_run_id=f"r{i}")
        await end(storage, f"r{i}/c", st.RunStatus.COMPLETED, 8.0)
        await end(storage, f"r{i}", st.RunStatus.COMPLETED, 9.0)
    op = st.PruneRuns(ENDED, 10.0, limit=50, budget=0.0)
    first = await storage.execute(op)
    assert sorted(first) == sorted([f"r{i}" for i in range(4)]
                                   + [f"r{i}/c" for i in range(4)])
    second = await storage.execute(op)
    assert sorted(second) == ["r4", "r4/c", "r5", "r5/c"]
    assert await storage.execute(op) == ()
    assert await storage.list_runs(limit=None) == []


async def test_prune_events(storage: st.Storage) -> None:
    for i in range(30):
        await storage.execute(st.RecordEvent(f"e{i}", "t", {"pad": "x" * 4000}, float(i),
                                             deep_subset))
    assert await storage.execute(st.PruneEvents(before=20.0, limit=15)) == 15
    assert await storage.execute(st.PruneEvents(before=20.0, limit=15)) == 5
    assert await storage.execute(st.PruneEvents(before=20.0)) == 0
    async with raw(storage) as db:
        assert await db.fetch("SELECT count(*) FROM events") == [(10,)]


async def test_incremental_vacuum_on_new_files(tmp_path: Path) -> None:
    path = tmp_path / "wf.db"
    async with st.SQLiteStorage.open(path) as storage:
        for i in range(30):
            await storage.execute(st.RecordEvent(f"e{i}", "t", {"pad": "x" * 4000}, float(i),
                                                 deep_subset))
        await storage.execute(st.PruneEvents(before=20.0))
        free = await storage.execute(st.IncrementalVacuum(1000))
        assert free == 0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL on new files
    conn.close()


async def test_vacuum_and_merge_are_no_ops_on_postgres(pg_url: str) -> None:
    """Autovacuum reclaims dead rows and a GIN index has no segments: nothing to report."""
    async with st.PostgresStorage.open(pg_url) as storage:
        await make_run(storage, "r1", input={"needle": "x"}, created_at=1.0)
        await end(storage, "r1", st.RunStatus.COMPLETED, 2.0)
        assert await storage.execute(st.PruneRuns(ENDED, 10.0)) == ("r1",)
        assert await storage.execute(st.MergeSearchIndex(100)) is False
        assert await storage.execute(st.IncrementalVacuum(100)) == 0
