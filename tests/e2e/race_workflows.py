"""Workflows for the two-daemon race tests (``test_races_postgres.py``): each parks on a wait
after a step of a chosen length, so the test can aim a resolution sent to the *other* daemon
at the moment the owner registers the wait (or replays its journal)."""

from __future__ import annotations

import time
from typing import Any

from runtime import Context, workflow


def _pause(seconds: float) -> float:
    time.sleep(seconds)  # a step thread: the daemon's loop goes on
    return seconds


@workflow(id="race-signal")
async def race_signal(input: dict[str, Any], ctx: Context) -> Any:
    await ctx.step("before", _pause, input["delay"])
    return await ctx.wait_for_signal("go")


@workflow(id="race-lookback")
async def race_lookback(input: dict[str, Any], ctx: Context) -> Any:
    await ctx.step("before", _pause, input["delay"])
    return await ctx.wait_for_event("race.ev", match={"k": input["k"]}, lookback="1h")


@workflow(id="race-prefix")
async def race_prefix(input: dict[str, Any], ctx: Context) -> Any:
    """Two branches wait on two signals; the first resolution makes the owner replay and run a
    step (whose commit carries the run's "running"); the second lands meanwhile."""

    async def branch(name: str, index: int) -> Any:
        got = await ctx.wait_for_signal(name)
        if index == 0:
            await ctx.step("after-first", _pause, input["delay"])
        return got

    return await ctx.parallel(["first", "second"], branch)
