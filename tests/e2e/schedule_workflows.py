"""Workflows the schedule e2e tests load (``workflows.modules = ["schedule_workflows"]``).

``sched-echo`` has no schedule of its own: the tests create schedules for it through the API.
"""

from __future__ import annotations

from typing import Any

from runtime import Context, workflow


@workflow(id="sched-echo", description="One step that echoes the input.")
async def echo(input: Any, ctx: Context) -> dict[str, Any]:
    value = await ctx.step("echo", lambda: input)
    return {"echo": value}
