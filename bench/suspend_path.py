"""The suspend path alone: a bare ``Execution`` driven with an instant async record callback.

Not a test. Each run is W1's workflow (``bench-steps``, 10 sequential trivial steps) driven by
``Execution.advance()`` on one host loop; ``record`` is an ``async def`` that returns at once
(``--hop``: one loop turn later, as a commit does), so what is timed is the executor's per-step
cost: the body suspending on a step, the host doing the step and the record, the body resuming.
Runs go one after another (no overlap). Only uses APIs older than issue 15, so it runs against
any commit since (docs/performance.md, "Body loop cost after issue 15").

    .venv/bin/python -m bench.suspend_path [--runs 2000] [--repeat 5] [--hop] [--asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.bench_workflows import bench_steps
from runtime.executor import Execution
from runtime.facts import HostServices, RunFacts
from runtime.journal import Entry, Journal, WaitpointResolved
from runtime.workflow import definition_of


async def _record(entry: Entry) -> Sequence[WaitpointResolved]:
    return ()


async def _record_hop(entry: Entry) -> Sequence[WaitpointResolved]:
    """Durable one loop turn later, as a commit the writer thread hands back."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_result, ())
    return await fut  # type: ignore[no-any-return]


async def drive(runs: int, steps: int, hop: bool = False) -> float:
    """Run ``runs`` executions one after another; return microseconds per step."""
    definition = definition_of(bench_steps)
    host = HostServices(record=_record_hop if hop else _record)
    started = time.perf_counter()
    for i in range(runs):
        facts = RunFacts(run_id=f"r{i}", workflow_id="bench-steps", workflow_version="1",
                         started_at=time.time())
        outcome = await Execution(definition, {"k": steps}, facts, Journal(), host).advance()
        if outcome.status != "completed":
            raise SystemExit(f"run r{i} ended {outcome.status}: {outcome.error}")
    return (time.perf_counter() - started) * 1e6 / (runs * steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--hop", action="store_true",
                        help="record suspends one loop turn (as a real commit), not instant")
    parser.add_argument("--asyncio", action="store_true", help="plain asyncio, not uvloop")
    args = parser.parse_args()
    if args.asyncio:
        run: Any = asyncio.run
    else:
        import uvloop

        run = uvloop.run
    per_step = [run(drive(args.runs, args.steps, args.hop)) for _ in range(args.repeat)]
    mode = "one-turn" if args.hop else "instant"
    print(f"suspend path ({mode} record), {args.runs} runs x {args.steps} steps, one at a "
          f"time: median {statistics.median(per_step):.1f} us/step, best {min(per_step):.1f}")


if __name__ == "__main__":
    main()
