"""The step path with nothing durable: W1's workflow under ``runtime.testing``, no daemon.

Not a test. An upper bound for W1: what the runtime's Python costs per step when no commit,
actor, writer thread, socket or log line is involved (docs/performance.md, "what bounds W1").

    .venv/bin/python -m bench.runtime_only [--runs 1000] [--steps 10] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import uvloop

from bench.bench_workflows import bench_steps
from runtime.testing import run_workflow_for_test


async def burst(runs: int, steps: int) -> float:
    """Run ``runs`` workflows of ``steps`` steps at once; return steps per second."""
    started = time.perf_counter()
    await asyncio.gather(*(
        run_workflow_for_test(bench_steps, {"k": steps}, run_id=f"r{i}") for i in range(runs)
    ))
    return runs * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rates = [uvloop.run(burst(args.runs, args.steps)) for _ in range(args.repeat)]
    best, median = max(rates), statistics.median(rates)
    print(f"runtime only, {args.runs} runs x {args.steps} steps at once: median "
          f"{median:,.0f} steps/s ({1e6 / median:.1f} us/step), best {best:,.0f}")


if __name__ == "__main__":
    main()
