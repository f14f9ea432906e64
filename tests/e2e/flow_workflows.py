"""Flow-control workflows the e2e daemon loads for ``test_flow_control``
(``workflows.modules = ["e2e_workflows", "flow_workflows"]``, with the repository root on
``workflows.paths`` for :mod:`tests.ledger`). Every id starts with ``flow-``.

The daemon is another process, so the bodies report through a ledger file named in the input:
one fsynced line per event (``tests.ledger.append_durably``), a JSON array
``[key, run_id, "start" | "end", wall time, pid, token]``, so the test can count what ran in each
daemon incarnation, across ``kill -9``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import time
from typing import Any

import orjson

from runtime import Concurrency, Context, Debounce, Throttle, workflow
from tests.ledger import append_durably


def note(path: str, key: str, run_id: str, what: str, token: str = "") -> str:
    line = [key, run_id, what, time.time(), os.getpid(), token]
    append_durably(path, orjson.dumps(line).decode() + "\n")
    return token


def _start(path: str, key: str, run_id: str) -> str:
    """A new token per attempt: the run's recorded output names the attempt that counted."""
    return note(path, key, run_id, "start", secrets.token_hex(8))


def _end(path: str, key: str, run_id: str) -> None:
    note(path, key, run_id, "end")


async def _bracketed(input: dict[str, Any], ctx: Context) -> str:
    """start; a durable sleep of input['nap'] seconds (the run keeps its slot); end."""
    token: str = await ctx.step("start", _start, input["ledger"], input["key"], ctx.run.id)
    await ctx.sleep(input.get("nap", 0.05))
    await ctx.step("end", _end, input["ledger"], input["key"], ctx.run.id)
    return token


@workflow(id="flow-per-key", concurrency=Concurrency(3, key=lambda i: i["key"]),
          description="At most 3 at once per input key; start, sleep, end in the ledger.")
async def per_key(input: dict[str, Any], ctx: Context) -> str:
    return await _bracketed(input, ctx)


@workflow(id="flow-fair", concurrency=[Concurrency(1), Concurrency(100, key=lambda i: i["key"])],
          description="One at a time in all, queued round-robin by input key.")
async def fair(input: dict[str, Any], ctx: Context) -> str:
    return await _bracketed(input, ctx)


@workflow(id="flow-throttled", throttle=Throttle(1, "0.3s"),
          description="One start per 0.3 s.")
async def throttled(input: dict[str, Any], ctx: Context) -> Any:
    return await ctx.step("noted", lambda: input)


# 5 s: a daemon restart (stop, spawn, ready) must fit inside the period with room to spare; on a
# loaded 2-core box it takes about 2 s, which a 2 s period did not survive.
@workflow(id="flow-debounced", debounce=Debounce("5s", key=lambda i: i["key"]),
          description="Debounced 5 s per input key; notes its start in the ledger.")
async def debounced(input: dict[str, Any], ctx: Context) -> Any:
    await ctx.step("start", _start, input["ledger"], input["key"], ctx.run.id)
    return input


@workflow(id="flow-single", concurrency=Concurrency(1, strategy="cancel-newest"),
          description="One at a time; a newcomer finding it busy is cancelled.")
async def single(input: Any, ctx: Context) -> Any:
    return await ctx.wait_for_signal("go")


@workflow(id="flow-queue", concurrency=Concurrency(1),
          description="One at a time; newcomers queue. Waits for the signal 'go'.")
async def queue(input: Any, ctx: Context) -> Any:
    return await ctx.wait_for_signal("go")


@workflow(id="flow-one", concurrency=Concurrency(1),
          description="One at a time in all; start, sleep, end in the ledger.")
async def one(input: dict[str, Any], ctx: Context) -> str:
    return await _bracketed(input, ctx)


@workflow(id="flow-pair", concurrency=Concurrency(2, key=lambda i: i["key"]),
          description="At most 2 at once per input key; start, sleep, end in the ledger.")
async def pair(input: dict[str, Any], ctx: Context) -> str:
    return await _bracketed(input, ctx)


@workflow(id="flow-spaced", throttle=Throttle(1, "1s"),
          description="One start per second; notes its start in the ledger.")
async def spaced(input: dict[str, Any], ctx: Context) -> Any:
    await ctx.step("start", _start, input["ledger"], input["key"], ctx.run.id)
    return input


# --- across daemons: invoke deadlock, cancel-in-progress (test_flow_daemons_postgres) ----------


@workflow(id="flow-dl-grand", concurrency=Concurrency(1, scope="flow-dl"),
          description="Holds the one 'flow-dl' slot and invokes flow-dl-middle with its input.")
async def dl_grand(input: Any, ctx: Context) -> Any:
    return await ctx.invoke("flow-dl-middle", input)


@workflow(id="flow-dl-middle", concurrency=Concurrency(1),
          description="One at a time; waits for 'go', then invokes input['child'] if given.")
async def dl_middle(input: Any, ctx: Context) -> Any:
    await ctx.wait_for_signal("go")
    if isinstance(input, dict) and input.get("child"):
        return await ctx.invoke(input["child"], None)
    return None


@workflow(id="flow-dl-child", concurrency=Concurrency(1, scope="flow-dl"),
          description="Needs the 'flow-dl' slot its grandparent holds: never starts.")
async def dl_child(input: Any, ctx: Context) -> Any:
    return "started"


def _reserve() -> str:
    return "reserved"


async def _undo_when(gate: str, marker: str, output: Any) -> None:
    """A compensation that says it began (``marker``), then lasts until ``gate`` exists."""
    with open(marker, "w", encoding="utf-8"):
        pass
    while not os.path.exists(gate):  # another process creates it: nothing to await on
        await asyncio.sleep(0.02)


@workflow(id="flow-latest",
          concurrency=Concurrency(1, scope="flow-swap", strategy="cancel-in-progress"),
          description="The newest replaces the one in the 'flow-swap' slot; its compensation "
                      "lasts until input['gate'] exists; then waits for 'go'.")
async def latest(input: dict[str, Any], ctx: Context) -> Any:
    await ctx.step("reserve", _reserve,
                   compensate=functools.partial(_undo_when, input["gate"], input["marker"]))
    return await ctx.wait_for_signal("go")


@workflow(id="flow-swap-queue", concurrency=Concurrency(1, scope="flow-swap"),
          description="Queues for the 'flow-swap' slot; waits for 'go'.")
async def swap_queue(input: Any, ctx: Context) -> Any:
    return await ctx.wait_for_signal("go")
