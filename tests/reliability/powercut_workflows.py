"""Workflows for the power-cut and fsync-EIO checks (ids start with ``pc-``).

Each step appends ``run_id step_id incarnation`` to a ledger (fsynced, and outside the torn
database), so a check can tell which daemon incarnation ran a step, and returns a value the
check can recompute, so a step result seen before the cut can be compared after it.
"""

from __future__ import annotations

import os
from typing import Any

from runtime import Context, current_step, workflow
from tests.ledger import append_durably


def step_value(run_id: str, index: int, pad: int) -> str:
    """What step ``s<index>`` of run ``run_id`` returns (padding makes WAL traffic)."""
    return f"{run_id}:{index}:" + "x" * pad


async def mark(ledger: str, index: int, pad: int) -> str:
    step = current_step()
    incarnation = os.environ.get("WF_TEST_INCARNATION", "0")
    append_durably(ledger, f"{step.run_id} {step.step_id} {incarnation}\n")
    return step_value(step.run_id, index, pad)


@workflow(id="pc-chain", description="A few short steps, each ledgered with its incarnation.")
async def chain(input: dict[str, Any], ctx: Context) -> list[str]:
    return [await ctx.step(f"s{i}", mark, input["ledger"], i, input["pad"])
            for i in range(input["steps"])]
