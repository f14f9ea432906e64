"""Small workflows that the tests in this directory run on a real engine.

:func:`registry` returns a new private :class:`~runtime.workflow.Registry` holding every
workflow below. Nothing here touches the process-wide ``REGISTRY`` (``@workflow`` would), so
two engines in one test process stay independent.

The engine runs in the test's own process, so a workflow that must be caught mid-step waits on
a :class:`Gate` (two ``asyncio.Event``\\ s named by the run id) rather than on a file. Call
:func:`reset` between tests (the ``conftest`` does it for every test).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from runtime import ChildRunError, Context, FatalError
from runtime.workflow import Registry, WorkflowDefinition

_DEFINITIONS: list[WorkflowDefinition] = []

BODY_ENTRIES: Counter[str] = Counter()
"""How many times each run's body was entered: once for a warm resume, again for a cold one."""

STARTED_ORDER: list[str] = []
"""Run ids of ``ordered`` runs, in the order their step ran."""

COMPENSATED: list[str] = []
"""Run ids whose ``reserve`` step was compensated, in order."""

CALLS: Counter[str] = Counter()
"""How many times a counted step ran, by ``"<run id>:<step id>"``."""

FIXED: set[str] = set()
"""Run ids whose ``flaky`` step succeeds (it fails with code FLAKY until the test adds one)."""


class Gate:
    """A step waits here: ``started`` is set when it gets in, it goes on once ``release`` is."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()


_GATES: dict[str, Gate] = {}


def gate(run_id: str) -> Gate:
    """The gate of ``run_id``'s ``hold`` step (made on first use, by the test or the step)."""
    return _GATES.setdefault(run_id, Gate())


def reset() -> None:
    _GATES.clear()
    BODY_ENTRIES.clear()
    STARTED_ORDER.clear()
    COMPENSATED.clear()
    CALLS.clear()
    FIXED.clear()


def definition(
    id: str, *, input_validator: Callable[[Any], Any] | None = None
) -> Callable[[Any], Any]:
    """Like ``@workflow`` but kept in this module's list, not in the global registry."""

    def decorate(fn: Any) -> Any:
        _DEFINITIONS.append(
            WorkflowDefinition(
                id=id,
                fn=fn,
                version="1",
                description=(fn.__doc__ or "").strip() or None,
                input_validator=input_validator,
                origin=f"{__name__}.{fn.__qualname__}",
            )
        )
        return fn

    return decorate


def registry() -> Registry:
    """A new registry holding every workflow of this module."""
    reg = Registry()
    for d in _DEFINITIONS:
        reg.register(d)
    return reg


# --- steps ----------------------------------------------------------------------------------------


async def _boom(message: str) -> None:
    raise FatalError(message, code="FATAL")


def _reserve(run_id: str) -> str:
    return f"reserved:{run_id}"


def _release(reservation: str) -> None:
    COMPENSATED.append(reservation.removeprefix("reserved:"))


async def _hold(run_id: str) -> str:
    g = gate(run_id)
    g.started.set()
    await g.release.wait()
    return "released"


def _order(run_id: str) -> None:
    STARTED_ORDER.append(run_id)


def _count(key: str) -> str:
    CALLS[key] += 1
    return key


def _flaky(run_id: str) -> str:
    if run_id not in FIXED:
        raise FatalError("not fixed yet", code="FLAKY")
    return "fixed"


# --- workflows ------------------------------------------------------------------------------------


@definition("echo")
async def echo(input: Any, ctx: Context) -> Any:
    """One step ('fetch') and one metadata value, then returns {"echo": input}."""
    value = await ctx.step("fetch", lambda: input)
    ctx.metadata.set("progress", 50)
    return {"echo": value}


def _needs_x(value: Any) -> Any:
    if not isinstance(value, dict) or "x" not in value:
        raise ValueError("'x' is required")
    return value


@definition("strict", input_validator=_needs_x)
async def strict(input: Any, ctx: Context) -> Any:
    """Input must be an object with 'x'."""
    return input


@definition("fail")
async def fail(input: Any, ctx: Context) -> None:
    """A step fails with FatalError FATAL 'it broke'."""
    await ctx.step("boom", _boom, "it broke")


@definition("event")
async def event(input: Any, ctx: Context) -> Any:
    """Waits for the event of type input['type'] (default 'go'); returns its payload."""
    BODY_ENTRIES[ctx.run.id] += 1
    kind = input.get("type", "go") if isinstance(input, dict) else "go"
    return await ctx.wait_for_event(kind)


@definition("signal")
async def signal(input: Any, ctx: Context) -> Any:
    """Waits for the signal 'finish'; returns its payload."""
    return await ctx.wait_for_signal("finish")


@definition("token")
async def token(input: Any, ctx: Context) -> Any:
    """Creates a token, publishes its id as metadata 'token', waits for it."""
    tok = await ctx.wait_for_token()
    await ctx.metadata.set("token", tok.id)
    return await tok.wait()


@definition("stream")
async def stream(input: Any, ctx: Context) -> str:
    """Streams 'hel', 'lo' as text stream 's'."""

    async def source() -> AsyncIterator[str]:
        yield "hel"
        yield "lo"

    text: str = await ctx.stream.text("s", source)
    return text


@definition("stream-broken")
async def stream_broken(input: Any, ctx: Context) -> str:
    """Streams 'par' as text stream 's', holds at its gate, then its source fails: the body
    carries on and completes, the stream never gets its final chunk."""
    run_id = ctx.run.id

    async def source() -> AsyncIterator[str]:
        yield "par"
        g = gate(run_id)
        g.started.set()
        await g.release.wait()
        raise ValueError("the source broke")

    try:
        await ctx.stream.text("s", source)
    except Exception as exc:  # how the source's error reaches the body is not the point here
        return f"broken: {exc}"
    return "whole"


@definition("slow")
async def slow(input: Any, ctx: Context) -> str:
    """Reserves (compensated), then holds at its gate until the test releases it."""
    await ctx.step("reserve", _reserve, ctx.run.id, compensate=_release)
    done: str = await ctx.step("hold", _hold, ctx.run.id)
    return done


@definition("reserve-wait")
async def reserve_wait(input: Any, ctx: Context) -> Any:
    """Reserves (compensated), then waits for the signal 'go'."""
    await ctx.step("reserve", _reserve, ctx.run.id, compensate=_release)
    return await ctx.wait_for_signal("go")


@definition("sleep")
async def sleep(input: Any, ctx: Context) -> str:
    """A durable sleep of input['seconds'], then one step."""
    await ctx.sleep(input["seconds"])
    woke: str = await ctx.step("after", lambda: "woke")
    return woke


@definition("ordered")
async def ordered(input: Any, ctx: Context) -> None:
    """Notes its run id in STARTED_ORDER."""
    await ctx.step("note", _order, ctx.run.id)


@definition("parent")
async def parent(input: Any, ctx: Context) -> Any:
    """Invokes input['child'] with input['child_input']; returns its output or error code."""
    try:
        output = await ctx.invoke(input["child"], input.get("child_input"))
    except ChildRunError as exc:
        return {"child_error": exc.code}
    return {"child_output": output}


@definition("vip")
async def vip(input: Any, ctx: Context) -> str:
    """Takes a different step when the run is tagged 'vip'."""
    if "vip" in ctx.run.tags:
        lane: str = await ctx.step("priority-lane", lambda: "fast")
    else:
        lane = await ctx.step("normal-lane", lambda: "normal")
    return lane


@definition("flaky")
async def flaky(input: Any, ctx: Context) -> Any:
    """'first' (counted), then 'flaky' fails FLAKY until the test fixes the run."""
    await ctx.step("first", _count, f"{ctx.run.id}:first")
    await ctx.step("flaky", _flaky, ctx.run.id)
    return {"attempt": ctx.run.attempt}


def _reserve_counted(run_id: str) -> str:
    _count(f"{run_id}:reserve")
    return _reserve(run_id)


@definition("saga")
async def saga(input: Any, ctx: Context) -> str:
    """Reserves (counted, compensated), then 'flaky' fails until the test fixes the run."""
    await ctx.step("reserve", _reserve_counted, ctx.run.id, compensate=_release)
    await ctx.step("flaky", _flaky, ctx.run.id)
    return "booked"


@definition("hold-then-step")
async def hold_then_step(input: Any, ctx: Context) -> str:
    """Holds at its gate ('hold'), then 'after' (counted)."""
    await ctx.step("hold", _hold, ctx.run.id)
    await ctx.step("after", _count, f"{ctx.run.id}:after")
    return "done"


@definition("wait-then-step")
async def wait_then_step(input: Any, ctx: Context) -> Any:
    """Waits for the signal 'go', then 'after' (counted); returns the signal's payload."""
    BODY_ENTRIES[ctx.run.id] += 1
    payload = await ctx.wait_for_signal("go")
    await ctx.step("after", _count, f"{ctx.run.id}:after")
    return payload
