"""Workflows for the crash tests. Every step appends one fsynced line to a ledger file, so the
test can count exactly how often each step body ran across daemon incarnations."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from runtime import Context, RetryableError, RetryPolicy, current_step, workflow
from tests.ledger import append_durably


def ledger(path: str, label: str) -> None:
    step = current_step()
    append_durably(path, f"{step.run_id} {step.step_id} {step.attempt} {label}\n")


async def record(path: str, label: str) -> str:
    ledger(path, label)
    return label


async def blocking(path: str, marker: str) -> str:
    ledger(path, "begin")
    # Blocks until the test creates the marker, so the daemon can be killed mid-step.
    while not os.path.exists(marker):
        await asyncio.sleep(0.02)
    ledger(path, "end")
    return "unblocked"


async def fail_first(path: str) -> str:
    ledger(path, "try")
    if current_step().attempt == 1:
        raise RetryableError("first attempt fails", retry_after=1.5)
    return "second attempt"


@workflow(id="crash-mid-step")
async def mid_step(input: dict[str, Any], ctx: Context) -> list[str]:
    a = await ctx.step("before", record, input["ledger"], "before")
    b = await ctx.step("blocking", blocking, input["ledger"], input["marker"])
    c = await ctx.step("after", record, input["ledger"], "after")
    return [a, b, c]


@workflow(id="crash-sleep")
async def sleeper(input: dict[str, Any], ctx: Context) -> str:
    await ctx.step("before", record, input["ledger"], "before")
    await ctx.sleep(input["sleep"])
    return str(await ctx.step("after", record, input["ledger"], "after"))


@workflow(id="crash-event")
async def event_waiter(input: dict[str, Any], ctx: Context) -> Any:
    await ctx.step("before", record, input["ledger"], "before")
    payload = await ctx.wait_for_event("crash.go", match={"key": input["key"]})
    await ctx.step("after", record, input["ledger"], "after")
    return payload


@workflow(id="crash-retry")
async def retrier(input: dict[str, Any], ctx: Context) -> str:
    return str(await ctx.step("flaky", fail_first, input["ledger"], retry=RetryPolicy(max=3)))


@workflow(id="crash-child")
async def child(input: dict[str, Any], ctx: Context) -> Any:
    await ctx.step("child-before", record, input["ledger"], "child-before")
    return await ctx.wait_for_event("crash.child", match={"key": input["key"]})


@workflow(id="crash-parent")
async def parent(input: dict[str, Any], ctx: Context) -> Any:
    await ctx.step("parent-before", record, input["ledger"], "parent-before")
    result = await ctx.invoke(child, input)
    await ctx.step("parent-after", record, input["ledger"], "parent-after")
    return result


@workflow(id="crash-burst")
async def burst(input: dict[str, Any], ctx: Context) -> int:
    total = 0
    for i in range(input["steps"]):
        label = await ctx.step(f"s{i}", record, input["ledger"], f"s{i}")
        total += len(label)
    return total


def kill_daemon() -> None:
    os.kill(os.getpid(), 9)  # a step whose every attempt takes the daemon down


@workflow(id="crash-poison")
async def poison(input: dict[str, Any], ctx: Context) -> str:
    await ctx.step("poison", kill_daemon)
    return "unreachable"


@workflow(id="crash-ok")
async def ok(input: dict[str, Any], ctx: Context) -> str:
    return str(await ctx.step("ok", lambda: "fine"))


@workflow(id="crash-flow")
async def flow(input: dict[str, Any], ctx: Context) -> Any:
    await ctx.step("a", record, input["ledger"], "a")
    await ctx.sleep(input.get("sleep", 0.2))
    # lookback: an event committed just before a crash still reaches a run registered after it
    payload = await ctx.wait_for_event("crash.flow", lookback="1h")
    await ctx.step("b", record, input["ledger"], "b")
    return payload
