"""Storage benchmark: acknowledged step-result writes/s through ``SQLiteStorage.commit``.

Not a test. For 1, 10, 100, 1000 concurrent writers at ``synchronous=full`` and ``normal``, each
writer records one step result per ``commit`` and awaits it before the next (as an actor does).
Printed beside the physical limit measured on the same disk in the same run: a raw ``sqlite3``
loop inserting one steps-like row per commit, and in batches of 100 rows per commit, with the
same pragmas.

    .venv/bin/python bench/storage_bench.py --seconds 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from storage import CreateRun, RecordStepAttempt, SQLiteStorage, StepStatus
from storage.sqlite import pragmas

WRITERS = (1, 10, 100, 1000)
MODES: tuple[pragmas.Synchronous, ...] = ("full", "normal")

RAW_SCHEMA = (
    "CREATE TABLE steps (run_id TEXT NOT NULL, step_id TEXT NOT NULL, position INTEGER, "
    "attempt INTEGER, status TEXT, output TEXT, error TEXT, started_at REAL, finished_at REAL, "
    "runtime TEXT, PRIMARY KEY (run_id, step_id)) WITHOUT ROWID"
)
RAW_INSERT = "INSERT INTO steps VALUES (?, ?, ?, 1, 'completed', ?, NULL, ?, ?, 'inline')"


def raw_rate(
    directory: Path, synchronous: pragmas.Synchronous, batch: int, seconds: float
) -> float:
    """Rows/s committed by a bare sqlite3 loop, ``batch`` rows per transaction."""
    path = directory / f"raw-{synchronous}-{batch}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    pragmas.apply_pragmas(conn, synchronous=synchronous, busy_timeout_ms=5000, writer=True)
    # Our writer checkpoints by itself (and turns SQLite's automatic checkpoint off); this bare
    # loop has no checkpointer, so it gets SQLite's own back: without any, its WAL only grows,
    # and appending to a growing file makes every fsync dearer (half the single-commit rate).
    conn.execute("PRAGMA wal_autocheckpoint = 1000")
    conn.execute(RAW_SCHEMA)
    rows = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            RAW_INSERT,
            [
                (
                    "run-0",
                    f"s{rows + i}",
                    rows + i,
                    orjson.dumps({"i": rows + i}).decode(),
                    now,
                    now,
                )
                for i in range(batch)
            ],
        )
        conn.execute("COMMIT")
        rows += batch
    elapsed = time.perf_counter() - start
    conn.close()
    return rows / elapsed


async def storage_rate(
    directory: Path, synchronous: pragmas.Synchronous, writers: int, seconds: float
) -> tuple[float, float]:
    """Acknowledged step writes/s and mean ops per transaction through ``SQLiteStorage``."""
    path = directory / f"storage-{synchronous}-{writers}.db"
    async with SQLiteStorage.open(path, synchronous=synchronous) as st:
        now = time.time()
        await st.commit(
            [
                CreateRun(run_id=f"run-{w}", workflow_id="bench", created_at=now)
                for w in range(writers)
            ]
        )
        before = st.stats()
        acks = 0
        stop = False

        async def writer(w: int) -> None:
            nonlocal acks
            run_id = f"run-{w}"
            i = 0
            while not stop:
                t = time.time()
                await st.commit(
                    [
                        RecordStepAttempt(
                            run_id=run_id,
                            step_id=f"s{i}",
                            attempt=1,
                            status=StepStatus.COMPLETED,
                            position=i,
                            output={"i": i},
                            started_at=t,
                            finished_at=t,
                            runtime="inline",
                        )
                    ]
                )
                acks += 1
                i += 1

        tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        stop = True
        counted = acks
        elapsed = time.perf_counter() - start
        await asyncio.gather(*tasks)
        after = st.stats()
        batches = max(1, after.batches - before.batches)
        return counted / elapsed, (after.requests - before.requests) / batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each cell")
    parser.add_argument(
        "--writers", type=int, nargs="*", default=list(WRITERS), help="writer counts to run"
    )
    parser.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="storage-bench-", dir=args.dir))
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "seconds": args.seconds,
        "modes": {},
    }
    try:
        for mode in MODES:
            cell: dict[str, Any] = {
                "raw_single_commit": raw_rate(directory, mode, 1, args.seconds),
                "raw_batched_100": raw_rate(directory, mode, 100, args.seconds),
                "storage": {},
            }
            for n in args.writers:
                rate, per_batch = asyncio.run(storage_rate(directory, mode, n, args.seconds))
                cell["storage"][str(n)] = {"writes_per_s": rate, "callers_per_commit": per_batch}
            results["modes"][mode] = cell
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(
        f"# {results['date']}  {results['machine']}  Python {results['python']}  "
        f"SQLite {results['sqlite']}  {args.seconds:g}s per cell"
    )
    print(
        f"{'synchronous':<12}{'writers':>8}{'acked writes/s':>16}{'callers/commit':>16}"
        f"{'% raw batched':>15}"
    )
    for mode, cell in results["modes"].items():
        raw = cell["raw_batched_100"]
        for n, row in cell["storage"].items():
            print(
                f"{mode:<12}{n:>8}{row['writes_per_s']:>16,.0f}{row['callers_per_commit']:>16.1f}"
                f"{100 * row['writes_per_s'] / raw:>14.0f}%"
            )
        print(f"{mode:<12}{'raw':>8}{cell['raw_single_commit']:>16,.0f}{'1 row':>16}")
        print(f"{mode:<12}{'raw':>8}{raw:>16,.0f}{'100 rows':>16}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
