"""W1's CPU cost per step in the daemon: a real ``wf daemon``, 1000 runs x 10 steps at once.

Not a test. Starts the bench daemon (bench/ours.py's config: uvloop, ``synchronous = "full"``,
info-level JSON log to a file), warms it up, then submits ``--runs`` runs of ``bench-steps``
through one client connection and waits for them all. Reports the daemon process's CPU seconds
(user + system, from /proc/<pid>/stat, threads included) spent during the burst per step, and
the wall-clock steps/s. Uses only bench/ours.py helpers that exist since before issue 15.

With ``--cachegrind`` the daemon runs under ``valgrind --tool=cachegrind`` twice, with a fifth
of ``--runs`` and with ``--runs``, and the difference of the two instruction totals per step is
printed: start-up and the warm-up cancel out, and the figure does not move with the machine's load.

    .venv/bin/python -m bench.cpu_w1 [--runs 1000] [--steps 10] [--repeat 1] [--cachegrind]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.ours import Daemon, warm_up, write_config

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


async def burst(daemon: Daemon, runs: int, steps: int) -> tuple[float, float]:
    """One burst after a warm-up; return (daemon CPU us per step, wall steps/s)."""
    from orchestrator.client import Client

    client = await Client.open(daemon.socket)
    try:
        await warm_up(client)

        async def one() -> None:
            run = await client.submit("bench-steps", {"k": steps})
            final = await client.wait(run["run_id"], timeout=900)
            if final["status"] != "completed":
                raise RuntimeError(f"W1 run ended {final['status']}: {final}")

        cpu0, t0 = cpu_seconds(daemon.pid), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(runs)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(daemon.pid) - cpu0
    finally:
        await client.close()
    return cpu * 1e6 / (runs * steps), runs * steps / wall


def instructions(runs: int, steps: int, keep: str | None = None) -> int:
    """Instructions the daemon executed in its whole life, doing one burst of ``runs``
    (``keep``: copy cachegrind's output file there, for ``cg_annotate``)."""
    with tempfile.TemporaryDirectory(prefix="wfcg-") as tmp:
        out = Path(tmp) / "cachegrind.out"
        daemon = Daemon(write_config(Path(tmp)), prefix=(
            "valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"))
        daemon.start()
        try:
            asyncio.run(burst(daemon, runs, steps))
        finally:
            daemon.stop(timeout=600)
        if keep:
            shutil.copy(out, keep)
        for line in out.read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError("cachegrind wrote no summary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="bursts, each on a fresh daemon")
    parser.add_argument("--cachegrind", action="store_true",
                        help="instructions per step under cachegrind (two daemons)")
    parser.add_argument("--keep", default=None,
                        help="with --cachegrind: keep the output files as KEEP.<runs>")
    args = parser.parse_args()
    if args.cachegrind:
        small = max(1, args.runs // 5)
        for _ in range(args.repeat):
            keep = args.keep
            low = instructions(small, args.steps, keep and f"{keep}.{small}")
            high = instructions(args.runs, args.steps, keep and f"{keep}.{args.runs}")
            per = (high - low) / ((args.runs - small) * args.steps)
            print(f"W1 daemon under cachegrind: {per / 1e3:.1f}k instructions/step "
                  f"({small} and {args.runs} runs x {args.steps} steps)")
        return
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="wfcpu-") as tmp:
            daemon = Daemon(write_config(Path(tmp)))
            daemon.start()
            try:
                cpu, rate = asyncio.run(burst(daemon, args.runs, args.steps))
            finally:
                daemon.stop()
        print(f"W1 {args.runs} runs x {args.steps} steps: daemon CPU {cpu:.1f} us/step, "
              f"{rate:,.0f} steps/s")


if __name__ == "__main__":
    main()
