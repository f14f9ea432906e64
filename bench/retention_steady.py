"""Steady load with retention on (issue 19): does the database file stop growing?

``python -m bench.retention_steady [--seconds 600] [--age 60] [--sweep 10] [--workers 8]``

An embedded ``Orchestrator`` on a real SQLite file (synchronous=full, the default) with
``[retention] completed = <age>`` runs ``bench-steps`` (5 steps, a 2 KB input) from
``--workers`` closed-loop workers (``--pad same`` or ``random``, see ``PADS``) for
``--seconds``, and prints the database and WAL sizes every
``--sweep`` seconds. The daemon's sweep runs every ``retention.SWEEP_EVERY`` (300 s); the bench
shortens it to ``--sweep`` so a 10-minute run sees many sweeps, and the full-text index merge
(``INDEX_MERGE_EVERY``, 3600 s) to ``--merge-every`` (the same code path, only sooner).
Figures go to docs/performance.md ("Retention under steady load"). Not a test: pytest never
collects it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ours import REPO
from storage.instruments import Instrument

CONFIG = """\
[daemon]
socket = "./wf.sock"
[storage]
path = "./wf.db"
[workflows]
paths = ["{repo}"]
modules = ["bench.bench_workflows"]
[logging]
level = "warning"
file = "./daemon.log"
[retention]
completed = "{age}s"
events = "{age}s"
"""

PADS = {
    # "same": one repeated character: every run's full-text document holds one trigram ~2000
    # times (the index's worst case: one huge doclist, rewritten by each merge).
    "same": lambda: "x" * 2000,
    # "random": 2000 hex characters per run (many distinct trigrams, as real inputs have).
    "random": lambda: secrets.token_hex(1000),
}


class WriterHolds(Instrument):
    """Each writer transaction's length, first op to COMMIT, measured in the writer thread; the
    longest of each sampling interval is reported (then reset)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.over_10ms = 0
        self._begun = 0.0

    def reached(self, point: str) -> None:
        if point == "batch.begun":
            self._begun = time.perf_counter()
        elif point == "batch.committed":
            held = time.perf_counter() - self._begun
            self.longest = max(self.longest, held)
            self.over_10ms += held > 0.010

    def take(self) -> tuple[float, int]:
        out = (self.longest, self.over_10ms)
        self.longest, self.over_10ms = 0.0, 0
        return out


def sizes(db: Path) -> tuple[int, int]:
    wal = Path(f"{db}-wal")
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0


async def main(seconds: float, age: float, sweep: float, workers: int,
               pad: str = "random", merge_every: float = 120.0) -> dict[str, Any]:
    from orchestrator import Orchestrator, logs
    from orchestrator.config import load_config
    from orchestrator.engine import retention

    retention.SWEEP_EVERY = sweep
    retention.INDEX_MERGE_EVERY = merge_every
    with tempfile.TemporaryDirectory(prefix="wf-retention-") as tmp:
        cfg_path = Path(tmp) / "config.toml"
        cfg_path.write_text(CONFIG.format(repo=REPO, age=age))
        cfg = load_config(cfg_path)
        logs.configure_logging(cfg.logging)
        db = cfg.storage.path
        done = [0]
        samples: list[dict[str, Any]] = []
        holds = WriterHolds()
        async with Orchestrator(cfg, configure_logging=False, instrument=holds) as orch:
            stop = time.monotonic() + seconds

            async def worker() -> None:
                while time.monotonic() < stop:
                    run = await orch.submit("bench-steps", {"k": 5, "pad": PADS[pad]()})
                    await orch.wait(run["run_id"])
                    done[0] += 1

            tasks = [asyncio.create_task(worker()) for _ in range(workers)]
            started = time.monotonic()
            while time.monotonic() < stop:
                await asyncio.sleep(sweep)
                db_bytes, wal_bytes = sizes(db)
                stats = await orch.stats()
                longest, over = holds.take()
                sample = {"t": round(time.monotonic() - started), "runs_done": done[0],
                          "db_mb": round(db_bytes / 1e6, 2), "wal_mb": round(wal_bytes / 1e6, 2),
                          "writer_longest_ms": round(longest * 1000, 1),
                          "writer_over_10ms": over,
                          "runs_stored": sum(stats.get("runs", {}).values())
                          if isinstance(stats.get("runs"), dict) else None}
                samples.append(sample)
                print(json.dumps(sample), flush=True)
            await asyncio.gather(*tasks)
        return {"seconds": seconds, "age_s": age, "sweep_s": sweep, "workers": workers,
                "pad": pad, "merge_every_s": merge_every,
                "runs_done": done[0], "samples": samples, "pid": os.getpid()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--age", type=float, default=60.0)
    parser.add_argument("--sweep", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--merge-every", type=float, default=120.0,
                        help="retention.INDEX_MERGE_EVERY for the run (the daemon's: 3600 s)")
    parser.add_argument("--pad", choices=sorted(PADS), default="random",
                        help="what the 2 KB of input padding is made of")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    a = parser.parse_args()
    result = asyncio.run(main(a.seconds, a.age, a.sweep, a.workers, a.pad,
                              a.merge_every))
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=1))
