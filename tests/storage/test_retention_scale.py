"""Pruning 100k ended runs (issue 19): how long it takes, how long the writer is held per batch,
and what happens to the file size (auto_vacuum=INCREMENTAL gives the pages back).

The batch times are wall-clock on a shared machine, so they are printed, not asserted, except
the median, which the per-op budget bounds whatever the machine does now and then."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import storage as st
from orchestrator.engine.retention import (
    MAX_INDEX_MERGES,
    RUN_BATCH,
    RUN_BUDGET,
    Retention,
    RetentionPolicy,
)
from runtime.clock import ManualClock
from storage.instruments import Instrument

N = 100_000


class WriterHold(Instrument):
    """How long each writer transaction lasted, from its first op to its COMMIT (in the writer
    thread, so the figure is the writer's hold, not the caller's wait)."""

    def __init__(self) -> None:
        self.holds: list[float] = []
        self._begun = 0.0

    def reached(self, point: str) -> None:
        if point == "batch.begun":
            self._begun = time.perf_counter()
        elif point == "batch.committed":
            self.holds.append(time.perf_counter() - self._begun)


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
    hold = WriterHold()
    async with st.SQLiteStorage.open(path, synchronous="normal", instrument=hold) as storage:
        clock = ManualClock(start=float(N) + 1.0)
        retention = Retention(storage, clock, RetentionPolicy(completed=5.0))
        batches: list[float] = []
        pruned = 0
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            gone = await storage.execute(
                st.PruneRuns((st.RunStatus.COMPLETED,), clock.now() - 5.0, limit=RUN_BATCH,
                             budget=RUN_BUDGET)
            )
            batches.append(time.perf_counter() - t0)
            pruned += len(gone)
            if not gone:
                break
        prune_s = time.perf_counter() - started
        holds = sorted(hold.holds)
        t0 = time.perf_counter()
        await retention.vacuum(merges=MAX_INDEX_MERGES)  # as `wf prune` does
        vacuum_s = time.perf_counter() - t0
        vacuum_holds = sorted(hold.holds[len(holds):])
        left = await storage.list_runs(limit=None)
        assert [r.run_id for r in left] == [f"run-{i:06d}" for i in range(N - 1, N - 6, -1)]
        assert await storage.list_runs(search="c976") == []  # FTS rows went with the runs
    size_after = path.stat().st_size
    assert pruned == N - 5
    batches.sort()
    median, p99, longest = (batches[len(batches) // 2], batches[int(len(batches) * 0.99)],
                            batches[-1])
    assert holds[len(holds) // 2] < 3 * RUN_BUDGET
    assert size_after < size_before / 10
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM steps").fetchone() == (5,)
    assert conn.execute("SELECT count(DISTINCT rowid / 4) FROM run_search").fetchone() == (5,)
    conn.close()
    with capsys.disabled():
        print(
            f"\n[prune 100k] {pruned} runs in {prune_s:.2f}s "
            f"({pruned / prune_s:.0f} runs/s) in {len(batches)} ops of <= {RUN_BATCH} trees "
            f"and a {RUN_BUDGET * 1000:.0f} ms budget: median {median * 1000:.2f} ms, "
            f"p99 {p99 * 1000:.2f} ms, longest {longest * 1000:.1f} ms (round trip); writer "
            f"held median {holds[len(holds) // 2] * 1000:.2f} ms, "
            f"p99 {holds[int(len(holds) * 0.99)] * 1000:.2f} ms, "
            f"longest {holds[-1] * 1000:.1f} ms; "
            f"vacuum {vacuum_s:.2f}s in {len(vacuum_holds)} ops (longest "
            f"{vacuum_holds[-1] * 1000:.1f} ms); file {size_before / 1e6:.1f} MB "
            f"-> {size_after / 1e6:.2f} MB"
        )

