"""Workflows for the reliability tests (ids start with ``rel-``).

Loaded two ways: imported in-process by the embedded-engine tests (as
``tests.reliability.rel_workflows``) and by a real daemon (``workflows.modules =
["rel_workflows"]`` with this directory on ``workflows.paths``). ``WALL`` is the wall clock the
``rel-sleep-stamp`` step reads; the clock-jump tests point it at their injected clock, and
``STAMPS`` counts how often each run's post-sleep step body ran (in-process only).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from runtime import Context, workflow

WALL: Callable[[], float] = time.time
STAMPS: Counter[str] = Counter()


@workflow(id="rel-echo", description="One step that echoes the input.")
async def echo(input: Any, ctx: Context) -> dict[str, Any]:
    value = await ctx.step("echo", lambda: input)
    return {"echo": value}


@workflow(id="rel-event", description="Wait for the event named in the input, echo its payload.")
async def event_wait(input: dict[str, Any], ctx: Context) -> Any:
    payload = await ctx.wait_for_event(input["type"])
    return {"payload": payload}


@workflow(id="rel-signal", description="Wait for the signal 'go'.")
async def signal_wait(input: Any, ctx: Context) -> Any:
    payload = await ctx.wait_for_signal("go")
    return {"payload": payload}


@workflow(id="rel-token", description="Create a token, publish it in metadata, wait for it.")
async def token_wait(input: Any, ctx: Context) -> Any:
    token = await ctx.wait_for_token()
    ctx.metadata.set("token", token.id)
    payload = await token.wait()
    return {"payload": payload}


def _blob(index: int, size: int) -> str:
    return f"{index:06d}" + "b" * (size - 6)


@workflow(id="rel-fill", description="Wait for an event, then record big step outputs.")
async def fill(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    await ctx.wait_for_event(input["type"])
    sizes = []
    for i in range(input["steps"]):
        out = await ctx.step(f"big-{i}", _blob, i, input["size"])
        sizes.append(len(out))
    return {"sizes": sizes}


@workflow(id="rel-sleep-stamp", description="Sleep, then record the wall clock in a step.")
async def sleep_stamp(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    await ctx.sleep(input["seconds"])

    def stamp() -> float:
        STAMPS[ctx.run.id] += 1
        return WALL()

    woke = await ctx.step("stamp", stamp)
    return {"woke": woke}


async def _work(i: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return i


@workflow(id="rel-work", description="A few short async steps.")
async def work(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    total = 0
    for i in range(input.get("steps", 3)):
        total += await ctx.step(f"s{i}", _work, i, input.get("seconds", 0.02))
    return {"total": total, "n": input.get("n")}
