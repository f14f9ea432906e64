"""The storage writer's cost per W1-shaped row, on SQLite and PostgreSQL (not a test).

``--runs`` runs are created, then ``--rounds`` rounds each commit one first step attempt per
run from as many concurrent callers (one or a few group-commit batches, as 1000 actors make),
then a round of ``UpdateRun`` status changes (each run's ``running`` and ``completed``, two per
run in W1). Reports acknowledged rows/s and this process's CPU per row (the writer thread
plus the loop side, which is the same code before and after a writer change): compare A/B in
one sitting.

    .venv/bin/python -m bench.writer_bench [--backend sqlite|postgres|both] [--runs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import storage as st


async def _rounds(s: Any, runs: int, rounds: int) -> dict[str, float]:
    ids = [f"r{i}" for i in range(runs)]
    await asyncio.gather(*(s.create_run(st.CreateRun(run_id=r, workflow_id="wf",
                                                     created_at=1.0)) for r in ids))

    async def timed(make: Callable[[str, int], Any], n: int) -> tuple[float, float]:
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            await asyncio.gather(*(s.commit([make(r, i)]) for r in ids))
        rows = n * runs
        return (rows / (time.perf_counter() - t0),
                (time.process_time() - cpu0) * 1e6 / rows)

    step = st.StepStatus.COMPLETED
    steps_rate, steps_cpu = await timed(
        lambda r, i: st.RecordStepAttempt(r, f"s{i}", 1, step, position=i, output=i,
                                          started_at=2.0, finished_at=2.1), rounds)
    running = st.RunStatus.RUNNING
    upd_rate, upd_cpu = await timed(
        lambda r, i: st.UpdateRun(r, 3.0 + i, status=running, started_at=3.0), 2)
    return {"step_rows_per_s": round(steps_rate), "step_cpu_us_per_row": round(steps_cpu, 1),
            "run_updates_per_s": round(upd_rate), "update_cpu_us_per_row": round(upd_cpu, 1)}


async def sqlite_case(runs: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="wfbench-writer-") as tmp:
        async with st.SQLiteStorage.open(Path(tmp) / "wf.db", synchronous="full") as s:
            return await _rounds(s, runs, rounds)


async def postgres_case(runs: int, rounds: int) -> dict[str, float]:
    from bench import pgcluster

    with pgcluster.cluster() as c:
        url = await pgcluster.create_database(c, "writer_bench")
        async with st.PostgresStorage.open(url) as s:
            return await _rounds(s, runs, rounds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    cases: dict[str, Callable[[int, int], Coroutine[Any, Any, dict[str, float]]]] = {
        "sqlite": sqlite_case, "postgres": postgres_case}
    for name, case in cases.items():
        if args.backend in (name, "both"):
            print(name, asyncio.run(case(args.runs, args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
