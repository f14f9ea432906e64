"""Event-triggered workflows the e2e daemon loads for ``test_triggers``
(``workflows.modules = ["e2e_workflows", "trigger_workflows"]``, with the repository root on
``workflows.paths`` for :mod:`tests.ledger`). Every id starts with ``trig-``.

The daemon is another process, so the batch consumer reports through a ledger file named in
its events' payloads: one fsynced line per execution of its step, a JSON array
``[run_id, [event ids], pid]``, so the test can count what ran in each daemon incarnation.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from runtime import Batch, Context, OnEvent, workflow
from tests.ledger import append_durably


def _note(path: str, run_id: str, ids: list[str]) -> int:
    append_durably(path, orjson.dumps([run_id, ids, os.getpid()]).decode() + "\n")
    return len(ids)


@workflow(id="trig-batch", on_event=OnEvent("trig.batch", batch=Batch(5, "1h")),
          description="Batches of 5 trig.batch events; notes their ids in the ledger.")
async def batch(input: dict[str, Any], ctx: Context) -> int:
    events = input["events"]
    n: int = await ctx.step("note", _note, events[0]["ledger"], ctx.run.id,
                            [e["id"] for e in events])
    return n


async def _echo(n: Any) -> Any:
    return n


@workflow(id="trig-load", on_event=OnEvent("trig.load"),
          description="One trivial step per trig.load event.")
async def load(input: dict[str, Any], ctx: Context) -> Any:
    return await ctx.step("echo", _echo, input["n"])
