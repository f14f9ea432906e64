"""W1's CPU per step in the daemon, split by thread, optionally under ``py-spy record``.

Not a test. Same burst as ``bench.cpu_w1`` (a real ``wf daemon`` on the bench config, 1000
runs x 10 steps through one client, after a warm-up), but reads every thread's user + system
CPU from ``/proc/<pid>/task/<tid>/stat`` before and after the burst. The main thread is the
event loop (its tid is the pid); the writer thread is named by ``py-spy dump`` when ``--name``
is given (Python 3.11 does not name its OS threads). With ``--py-spy OUT`` the burst runs under
``py-spy record --threads --format raw`` attached to the daemon (``--rate`` Hz; idle samples
dropped, so the samples follow CPU time), or with ``--native --idle`` for C frames and waits.

    .venv/bin/python -m bench.threads_w1 [--runs 1000] [--py-spy /tmp/w1.txt] [--name]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ours import Daemon, warm_up, write_config

_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of every live thread of ``pid``, by tid."""
    out: dict[int, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[int(task.name)] = (int(fields[11]) / _TICK, int(fields[12]) / _TICK)
    return out


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # pip install py-spy into the venv
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by OS tid, from ``py-spy dump`` (empty if py-spy is missing)."""
    try:
        text = subprocess.run([_py_spy(), "dump", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names: dict[int, str] = {}
    for m in re.finditer(r'Thread (\S+) \((?:active|idle)[^)]*\): "([^"]*)"', text):
        tid = m.group(1)
        names[int(tid, 16) if tid.startswith("0x") else int(tid)] = m.group(2)
    return names


async def burst(daemon: Daemon, runs: int, steps: int, spy_out: str | None,
                rate: int, native: bool) -> tuple[dict[int, tuple[float, float]], float, float]:
    from orchestrator.client import Client

    client = await Client.open(daemon.socket)
    spy: subprocess.Popen[bytes] | None = None
    try:
        await warm_up(client)
        if spy_out:
            # --native has to stop the process per sample, which also biases samples toward
            # system calls; without it py-spy reads the stacks without stopping anything.
            mode = ["--native", "--idle"] if native else ["--nonblocking"]
            spy = subprocess.Popen(
                [_py_spy(), "record", "--threads", "--format", "raw", *mode,
                 "--rate", str(rate), "--pid", str(daemon.pid), "--output", spy_out],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1.0)  # let py-spy attach

        async def one() -> None:
            run = await client.submit("bench-steps", {"k": steps})
            final = await client.wait(run["run_id"], timeout=900)
            if final["status"] != "completed":
                raise RuntimeError(f"W1 run ended {final['status']}: {final}")

        before, t0 = thread_cpu(daemon.pid), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(runs)))
        wall, after = time.perf_counter() - t0, thread_cpu(daemon.pid)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        await client.close()
    n = runs * steps
    per = {tid: ((u - before.get(tid, (0.0, 0.0))[0]) * 1e6 / n,
                 (s - before.get(tid, (0.0, 0.0))[1]) * 1e6 / n)
           for tid, (u, s) in after.items()}
    return per, runs * steps / wall, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--py-spy", dest="spy", default=None, help="write a raw py-spy profile")
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--native", action="store_true",
                        help="py-spy --native --idle (stops the process per sample)")
    parser.add_argument("--name", action="store_true", help="name threads with py-spy dump")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wfthr-") as tmp:
        daemon = Daemon(write_config(Path(tmp)))
        daemon.start()
        try:
            names = thread_names(daemon.pid) if args.name else {}
            per, rate, _ = asyncio.run(
                burst(daemon, args.runs, args.steps, args.spy, args.rate, args.native))
            names = {**(thread_names(daemon.pid) if args.name else {}), **names}
        finally:
            daemon.stop()
    total = sum(u + s for u, s in per.values())
    print(f"W1 {args.runs} x {args.steps}: daemon CPU {total:.1f} us/step, {rate:,.0f} steps/s")
    for tid, (user, system) in sorted(per.items(), key=lambda kv: -sum(kv[1])):
        if user + system >= 0.05:
            label = "main (event loop)" if tid == daemon.pid else names.get(tid, "?")
            print(f"  {tid:>8} {label:<24} {user + system:7.1f} us/step "
                  f"(user {user:.1f}, system {system:.1f})")


if __name__ == "__main__":
    main()
