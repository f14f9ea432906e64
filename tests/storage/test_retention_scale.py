"""Pruning 100k ended runs (issue 19): how long it takes, how long the writer is held per batch,
and what happens to the file size (auto_vacuum=INCREMENTAL gives the pages back)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import storage as st
from orchestrator.engine.retention import RUN_BATCH, Retention, RetentionPolicy
from runtime.clock import ManualClock

N = 100_000


def populate(path: Path) -> None:
    """100k completed runs with a step each, written straight to the file (the FTS rows come
    from the 0006 triggers, as in production)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO runs (number, run_id, workflow_id, status, input, output, created_at, "
        "finished_at, updated_at) VALUES (?, ?, 'wf', 'completed', ?, ?, ?, ?, ?)",
        ((i + 1, f"run-{i:06d}", f'{{"c": "c{i % 977}"}}', f"{i * 3}", float(i),
          float(i) + 1, float(i) + 1) for i in range(N)),
    )
    conn.executemany(
        "INSERT INTO steps (run_no, step_id, position, attempt, status, output, started_at, "
        "finished_at) VALUES (?, 'charge', 0, 1, 'completed', '{\"ok\": true}', 0, 1)",
        ((i + 1,) for i in range(N)),
    )
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.slow
async def test_prune_100k_runs_in_short_batches_and_shrink_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "wf.db"
    async with st.SQLiteStorage.open(path, synchronous="normal"):
        pass
    populate(path)
    size_before = path.stat().st_size
    async with st.SQLiteStorage.open(path, synchronous="normal") as storage:
        clock = ManualClock(start=float(N) + 1.0)
        retention = Retention(storage, clock, RetentionPolicy(completed=5.0))
        longest = 0.0
        pruned = 0
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            gone = await storage.execute(
                st.PruneRuns((st.RunStatus.COMPLETED,), clock.now() - 5.0, limit=RUN_BATCH)
            )
            longest = max(longest, time.perf_counter() - t0)
            pruned += len(gone)
            if not gone:
                break
        prune_s = time.perf_counter() - started
        t0 = time.perf_counter()
        await retention.vacuum()
        vacuum_s = time.perf_counter() - t0
        left = await storage.list_runs(limit=None)
        assert [r.run_id for r in left] == [f"run-{i:06d}" for i in range(N - 1, N - 6, -1)]
        assert await storage.list_runs(search="c976") == []  # FTS rows went with the runs
    size_after = path.stat().st_size
    assert pruned == N - 5
    assert size_after < size_before / 10
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM steps").fetchone() == (5,)
    assert conn.execute("SELECT count(*) FROM run_search").fetchone() == (5,)
    conn.close()
    with capsys.disabled():
        print(
            f"\n[prune 100k] {pruned} runs in {prune_s:.2f}s "
            f"({pruned / prune_s:.0f} runs/s), longest batch of {RUN_BATCH} trees "
            f"{longest * 1000:.1f} ms, vacuum {vacuum_s:.2f}s; file {size_before / 1e6:.1f} MB "
            f"-> {size_after / 1e6:.2f} MB"
        )

