"""W1's CPU cost per step in the daemon: a real ``wf daemon``, 1000 runs x 10 steps at once.

Not a test. Starts the bench daemon (bench/ours.py's config: uvloop, ``synchronous = "full"``,
info-level JSON log to a file), warms it up, then submits ``--runs`` runs of ``bench-steps``
through one client connection and waits for them all. Reports the daemon process's CPU seconds
(user + system, from /proc/<pid>/stat, threads included) spent during the burst per step, and
the wall-clock steps/s. Uses only bench/ours.py helpers that exist since before issue 15.

    .venv/bin/python -m bench.cpu_w1 [--runs 1000] [--steps 10] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="bursts, each on a fresh daemon")
    args = parser.parse_args()
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
