"""Workflows for the mixed-workload crash driver (``mixed_driver.py``).

One interpreter workflow runs a seeded *plan*: a list of ops covering the whole mix (ledger
steps, sleeps, event waits, signals, tokens, a step that fails N times then succeeds with a
fixed backoff, a child run, a final ``FatalError`` that triggers compensation). The output is a
deterministic function of the input, so ``runtime.testing`` can say how each run must end.

Every step body and compensation appends ``run_id step_key attempt incarnation time`` to the
ledger named by ``WF_MIXED_LEDGER`` (O_APPEND, fsynced). Only the daemon's environment sets it: the
in-process reference run writes nothing. Step outputs carry the incarnation that ran them
(``inc``), which the workflow output leaves out.
"""

from __future__ import annotations

import os
import time
from typing import Any

from runtime import (
    Concurrency,
    Context,
    FatalError,
    RetryableError,
    RetryPolicy,
    current_step,
    workflow,
)
from tests.ledger import append_durably

LEDGER_ENV = "WF_MIXED_LEDGER"
EVENT_TYPE = "mix.go"
SIGNAL = "mix.sig"
PARENT = "mix-plan"
LIMITED = "mix-plan-limited"  # the same body under a concurrency limit per group
LIMIT = 2
# Only to prove the drivers' limit checks can fail: daemons started with this set enforce
# another limit than the checks expect (the drivers' processes never set it).
LIMIT_ENV = "WF_MIXED_LIMIT"
CHILD = "mix-child"

Op = list[Any]  # ["step"] | ["sleep", s] | ["event"] | ["signal"] | ["token"]
#                 | ["retry", fails, backoff_s] | ["child", plan] | ["fatal"]


def incarnation() -> int | None:
    inc = os.environ.get("WF_TEST_INCARNATION")
    return int(inc) if inc else None


def append_line(run_id: str, key: str, attempt: int) -> None:
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return  # the in-process reference run
    # The wall time lets the many-daemon checks order lines against commits (cluster_driver).
    append_durably(path, f"{run_id} {key} {attempt} {incarnation()} {time.time():.6f}\n")


# Payloads the driver delivers are functions of the waitpoint, so the reference run can be
# supplied exactly what the daemon got.
def event_match(key: str, i: int) -> dict[str, Any]:
    return {"key": key, "n": i}


def event_payload(match: dict[str, Any]) -> dict[str, Any]:
    return {**match, "v": f"e-{match['key']}-{match['n']}"}


def event_id(match: dict[str, Any]) -> str:
    return f"ev-{match['key']}-{match['n']}"


def signal_payload(match: dict[str, Any]) -> dict[str, Any]:
    return {**match, "v": f"s-{match['key']}-{match['n']}"}


def token_id(key: str, i: int) -> str:
    return f"tok-{key}-{i}"


def token_payload(token: str) -> dict[str, Any]:
    return {"token": token}


# Step bodies are sync on purpose: they run in the step thread pool, so many fsyncs overlap.
def ledger_step(value: str) -> dict[str, Any]:
    step = current_step()
    append_line(step.run_id, step.step_id, step.attempt)
    return {"v": value, "inc": incarnation(), "run": step.run_id, "step": step.step_id}


def flaky_step(fails: int, backoff: float) -> dict[str, Any]:
    step = current_step()
    append_line(step.run_id, step.step_id, step.attempt)
    if step.attempt <= fails:
        # The incarnation in the message lets the driver tell which daemon recorded the failure.
        raise RetryableError(f"attempt {step.attempt} fails (inc {incarnation()})",
                             retry_after=backoff)
    return {"v": step.attempt, "inc": incarnation()}


def fatal_step() -> None:
    step = current_step()
    append_line(step.run_id, step.step_id, step.attempt)
    raise FatalError("planned fatal error", code="MIX_FATAL")


def undo(output: dict[str, Any]) -> None:
    append_line(output["run"], f"{output['step']}#undo", 0)


async def run_plan(input: dict[str, Any], ctx: Context, child_wf: str | None) -> list[Any]:
    key: str = input["key"]
    out: list[Any] = []
    for i, op in enumerate(input["plan"]):
        kind = op[0]
        if kind == "step":
            rec = await ctx.step(f"{i}.step", ledger_step, f"{key}:{i}", compensate=undo)
            out.append(rec["v"])
        elif kind == "sleep":
            await ctx.sleep(op[1])
            out.append("slept")
        elif kind == "event":
            out.append(await ctx.wait_for_event(EVENT_TYPE, match=event_match(key, i)))
        elif kind == "signal":
            out.append(await ctx.wait_for_signal(SIGNAL, match=event_match(key, i)))
        elif kind == "token":
            tok = await ctx.wait_for_token(token_id(key, i))
            out.append(await tok.wait())
        elif kind == "retry":
            fails, backoff = op[1], op[2]
            policy = RetryPolicy(max=fails + 1, backoff="fixed", initial=backoff)
            rec = await ctx.step(f"{i}.retry", flaky_step, fails, backoff, retry=policy)
            out.append(rec["v"])
        elif kind == "child" and child_wf is not None:
            out.append(await ctx.invoke(child_wf, {"key": f"{key}.c{i}", "plan": op[1]}))
        elif kind == "fatal":
            await ctx.step(f"{i}.fatal", fatal_step)
        else:
            raise ValueError(f"bad op {op!r}")
    return out


@workflow(id=PARENT)
async def mix_plan(input: dict[str, Any], ctx: Context) -> list[Any]:
    return await run_plan(input, ctx, CHILD)


@workflow(id=LIMITED, concurrency=Concurrency(int(os.environ.get(LIMIT_ENV) or LIMIT),
                                                key=lambda i: i["group"]))
async def mix_plan_limited(input: dict[str, Any], ctx: Context) -> list[Any]:
    return await run_plan(input, ctx, CHILD)


@workflow(id=CHILD)
async def mix_child(input: dict[str, Any], ctx: Context) -> list[Any]:
    return await run_plan(input, ctx, None)
