"""The workflows our engine runs in the benchmarks (loaded by the bench daemon's config).

Steps are trivial async functions (a sync one would go through the step thread pool), so what
is measured is the engine: one durable commit per step, the actor, the executor.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from runtime import Concurrency, Context, OnEvent, workflow


async def _noop(i: int) -> int:
    return i


async def _now() -> float:
    return time.time()


@workflow(id="bench-steps", description="W1/W4: k trivial sequential steps.")
async def bench_steps(input: dict[str, Any], ctx: Context) -> int:
    k = int(input["k"])
    for i in range(k):
        await ctx.step(f"s{i}", _noop, i)
    return k


@workflow(
    id="bench-steps-limited",
    description="W1c: W1's body under Concurrency(50, key=...) (100 keys in the bench).",
    concurrency=Concurrency(50, key=lambda i: i["key"]),
)
async def bench_steps_limited(input: dict[str, Any], ctx: Context) -> int:
    k = int(input["k"])
    for i in range(k):
        await ctx.step(f"s{i}", _noop, i)
    return k


@workflow(id="bench-sleep", description="W2: sleep, then one step recording when it ran.")
async def bench_sleep(input: dict[str, Any], ctx: Context) -> float:
    await ctx.sleep(float(input["seconds"]))
    return float(await ctx.step("woke", _now))


@workflow(id="bench-sleep-until",
          description="bench.wakes: sleep until a common instant, then W2's step.")
async def bench_sleep_until(input: dict[str, Any], ctx: Context) -> float:
    await ctx.sleep_until(datetime.fromtimestamp(float(input["until"]), UTC))
    return float(await ctx.step("woke", _now))


@workflow(id="bench-event", description="W3/W5: wait for one event, then one step.")
async def bench_event(input: dict[str, Any], ctx: Context) -> float:
    await ctx.wait_for_event(input["type"])
    return float(await ctx.step("resumed", _now))


@workflow(id="bench-long-wait", description="W4: k steps, then r x (wait for an event, step).")
async def bench_long_wait(input: dict[str, Any], ctx: Context) -> list[float]:
    k = int(input["k"])
    for i in range(k):
        await ctx.step(f"s{i}", _noop, i)
    out: list[float] = []
    for r in range(int(input["r"])):
        await ctx.wait_for_event(f"{input['type']}.{r}")
        out.append(float(await ctx.step(f"resumed{r}", _now)))
    return out


@workflow(id="bench-triggered", on_event=OnEvent("bench.w8"),
          description="W8: started by each bench.w8 event; one trivial step.")
async def bench_triggered(input: dict[str, Any], ctx: Context) -> int:
    return int(await ctx.step("noop", _noop, int(input["i"])))
