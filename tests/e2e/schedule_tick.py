"""A code-declared schedule firing every second (``workflows.modules = ["schedule_tick"]``),
loaded only by the test that watches it fire."""

from __future__ import annotations

from typing import Any

from runtime import Context, Schedule, workflow


@workflow(id="sched-tick", schedule=Schedule(every="1s", name="every-second",
                                             input={"tick": True}, overlap="allow"))
async def tick(input: Any, ctx: Context) -> dict[str, Any]:
    value = await ctx.step("tick", lambda: input)
    return {"tick": value}
