"""W2's wake-ups alone: CPU per wake in the daemon, by thread, and the lateness they add.

Not a test. A real ``wf daemon`` on the bench config; ``--runs`` sleepers are submitted and
parked first, all due at one instant ``--lead`` seconds after the last submit (so no
submission competes with the wake-ups, unlike W2 where 10k submissions take longer than the
2 s sleep); then the CPU of every thread from ``/proc/<pid>/task/*/stat`` is read from just
before that instant until every run has completed. Lateness is W2's: the ``woke`` step's
clock reading minus the sleep's due time. ``--py-spy OUT`` records the wake window (raw
format, ``--nonblocking``: samples follow CPU time) for ``bench.spy_areas``.

    .venv/bin/python -m bench.wakes [--runs 10000] [--py-spy /tmp/w2.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import summary_ms
from bench.ours import Daemon, submit_all, wait_all, wait_waiting, warm_up, write_config
from bench.threads_w1 import _py_spy, thread_cpu


async def wakes(daemon: Daemon, runs: int, lead: float, spy_out: str | None,
                rate: int) -> dict[str, Any]:
    from orchestrator.client import Client

    client = await Client.open(daemon.socket)
    spy: subprocess.Popen[bytes] | None = None
    try:
        await warm_up(client)
        # Due at one instant: each run sleeps until the common deadline (wall clock).
        deadline = time.time() + lead + runs / 2000
        t0 = time.perf_counter()
        ids = await submit_all(client, "bench-sleep-until", [{"until": deadline}] * runs, "wakes")
        submit_s = time.perf_counter() - t0
        await wait_waiting(client, runs, "wakes")
        if deadline - time.time() < 1.5:
            raise RuntimeError("the submissions ran past the deadline: raise --lead")
        if spy_out:
            spy = subprocess.Popen(
                [_py_spy(), "record", "--threads", "--format", "raw", "--nonblocking",
                 "--rate", str(rate), "--pid", str(daemon.pid), "--output", spy_out],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(max(0.0, deadline - time.time() - 0.2))
        before = thread_cpu(daemon.pid)
        finals = await wait_all(client, ids, "wakes")
        after = thread_cpu(daemon.pid)
        window = time.time() - deadline
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        await client.close()
    lateness = [float(r["output"]) - deadline for r in finals]
    per = {tid: ((u - before.get(tid, (0.0, 0.0))[0]) * 1e6 / runs,
                 (s - before.get(tid, (0.0, 0.0))[1]) * 1e6 / runs)
           for tid, (u, s) in after.items()}
    return {"runs": runs, "submit_s": submit_s, "window_s": window,
            "lateness": summary_ms(lateness), "per_thread": per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--lead", type=float, default=3.0,
                        help="seconds between the expected end of the submits and the due time")
    parser.add_argument("--py-spy", dest="spy", default=None)
    parser.add_argument("--rate", type=int, default=250)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wfwake-") as tmp:
        daemon = Daemon(write_config(Path(tmp)))
        daemon.start()
        try:
            out = asyncio.run(wakes(daemon, args.runs, args.lead, args.spy, args.rate))
        finally:
            daemon.stop()
    per = out["per_thread"]
    total = sum(u + s for u, s in per.values())
    lat = out["lateness"]
    print(f"wakes {args.runs}: submitted in {out['submit_s']:.2f} s; lateness p50 "
          f"{lat['p50_ms']:.0f} ms p99 {lat['p99_ms']:.0f} ms max {lat['max_ms']:.0f} ms; "
          f"daemon CPU {total:.1f} us/wake")
    for tid, (user, system) in sorted(per.items(), key=lambda kv: -sum(kv[1])):
        if user + system >= 0.5:
            label = "main (event loop)" if tid == daemon.pid else "?"
            print(f"  {tid:>8} {label:<20} {user + system:7.1f} us/wake "
                  f"(user {user:.1f}, system {system:.1f})")


if __name__ == "__main__":
    main()
