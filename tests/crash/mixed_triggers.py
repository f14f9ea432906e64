"""Triggered and scheduled workflows in the mixed crash rounds (issue 17), loaded beside
``mixed_workflows`` by the single-daemon rounds of ``mixed_driver`` only.

- ``mix-triggered``: started by a ``mix.start`` event whose payload is a ``mix-plan`` input; the
  same body, so ``runtime.testing`` says how it must end. Its run id comes from the event id.
- ``mix-batch``: ``mix.batch`` events in batches of 3 (or what is in 0.5 s after the first); one
  ledger step per batch, the output is the batch's event ids.
- ``mix-tick``: a code-declared schedule every 0.25 s (``overlap="allow"``; a restart's downtime
  spans several due times, so missed fires collapse); one ledger step.

Every step is :func:`mixed_workflows.ledger_step`, so the driver's ledger checks cover them.
"""

from __future__ import annotations

from typing import Any

from runtime import Batch, Context, OnEvent, Schedule, workflow
from tests.crash import mixed_workflows as mw
from tests.crash.mixed_trigger_names import (
    BATCH_EVENT,
    BATCH_SIZE,
    BATCH_TIMEOUT,
    BATCHED,
    START_EVENT,
    TICK,
    TICK_EVERY,
    TRIGGERED,
)


@workflow(id=TRIGGERED, on_event=OnEvent(START_EVENT))
async def mix_triggered(input: dict[str, Any], ctx: Context) -> list[Any]:
    return await mw.run_plan(input, ctx, mw.CHILD)


@workflow(id=BATCHED, on_event=OnEvent(BATCH_EVENT, batch=Batch(BATCH_SIZE, BATCH_TIMEOUT)))
async def mix_batch(input: dict[str, Any], ctx: Context) -> list[str]:
    ids = [e["id"] for e in input["events"]]
    await ctx.step("note", mw.ledger_step, ",".join(ids))
    return ids


@workflow(id=TICK, schedule=Schedule(every=TICK_EVERY, name=TICK, overlap="allow"))
async def mix_tick(input: Any, ctx: Context) -> str:
    rec = await ctx.step("tick", mw.ledger_step, "tick")
    value: str = rec["v"]
    return value
