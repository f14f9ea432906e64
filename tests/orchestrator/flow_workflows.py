"""Workflow bodies and option builders for the flow-control tests (SPEC §2a) on a real engine.

Each test declares its own options, so nothing here is registered anywhere: :func:`define`
builds a :class:`~runtime.workflow.WorkflowDefinition` checked as ``@workflow`` checks it, and
:func:`registry` puts the test's definitions in a new private
:class:`~runtime.workflow.Registry` (two engines on one file in one test get the same one).

The bodies note what they do in module state the test reads: :data:`STARTED` (run ids in the
order their first step ran), :data:`ACTIVE` / :data:`PEAK` (runs between their ``enter`` and
``leave`` steps, per label, and the most seen at once). Recorded steps never run again, so a
restart does not count a run twice. Call :func:`reset` between tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from runtime import Context, FatalError
from runtime.flow import Concurrency, Debounce, Throttle
from runtime.workflow import Registry, WorkflowDefinition, WorkflowFn, _concurrency

STARTED: list[str] = []
"""Run ids in the order their ``enter`` step ran."""

ACTIVE: Counter[str] = Counter()
PEAK: Counter[str] = Counter()
"""Per label (the input's ``"label"``, default the workflow id): runs inside enter..leave."""

COMPENSATED: list[str] = []
"""Run ids whose ``reserve`` step was compensated."""

KEY_CALLS: Counter[str] = Counter()
"""How many times :func:`counted_key` was called, per key it returned."""


def reset() -> None:
    STARTED.clear()
    ACTIVE.clear()
    PEAK.clear()
    COMPENSATED.clear()
    KEY_CALLS.clear()


def define(
    id: str,
    fn: WorkflowFn,
    *,
    concurrency: Concurrency | Sequence[Concurrency] | None = None,
    throttle: Throttle | None = None,
    debounce: Debounce | None = None,
    start_timeout: float | None = None,
) -> WorkflowDefinition:
    """A definition of ``fn`` under ``id`` with these options, checked like ``@workflow``."""
    where = f"workflow {id!r}"
    if throttle is not None:
        throttle.check(f"{where}: throttle")
    if debounce is not None:
        debounce.check(f"{where}: debounce")
    return WorkflowDefinition(
        id=id,
        fn=fn,
        version="1",
        concurrency=_concurrency(id, concurrency),
        throttle=throttle,
        debounce=debounce,
        start_timeout=start_timeout,
        origin=f"{__name__}:{id}",
    )


def registry(*definitions: WorkflowDefinition) -> Registry:
    reg = Registry()
    for d in definitions:
        reg.register(d)
    return reg


# --- keys -----------------------------------------------------------------------------------------


def by_k(run_input: Any) -> Any:
    return run_input["k"]


def counted_key(run_input: Any) -> Any:
    """``input["k"]``, counting each call in :data:`KEY_CALLS`."""
    KEY_CALLS[run_input["k"]] += 1
    return run_input["k"]


# --- steps ----------------------------------------------------------------------------------------


def _label(run_input: Any, ctx: Context) -> str:
    if isinstance(run_input, dict) and "label" in run_input:
        return str(run_input["label"])
    return ctx.workflow.id


def _enter(run_id: str, label: str) -> None:
    STARTED.append(run_id)
    ACTIVE[label] += 1
    PEAK[label] = max(PEAK[label], ACTIVE[label])


def _leave(label: str) -> None:
    ACTIVE[label] -= 1


def _reserve(run_id: str) -> str:
    return run_id


def _release(run_id: str) -> None:
    COMPENSATED.append(run_id)


# --- bodies ---------------------------------------------------------------------------------------


async def quick(input: Any, ctx: Context) -> Any:
    """enter, leave; returns the input."""
    label = _label(input, ctx)
    await ctx.step("enter", _enter, ctx.run.id, label)
    await ctx.step("leave", _leave, label)
    return input


async def held(input: Any, ctx: Context) -> Any:
    """enter, a compensated 'reserve', waits for the signal 'go' (holding its slot), leave."""
    label = _label(input, ctx)
    await ctx.step("enter", _enter, ctx.run.id, label)
    await ctx.step("reserve", _reserve, ctx.run.id, compensate=_release)
    got = await ctx.wait_for_signal("go")
    await ctx.step("leave", _leave, label)
    return got


async def napping(input: Any, ctx: Context) -> Any:
    """enter, a durable sleep of input['nap'] seconds (holding its slot), leave."""
    label = _label(input, ctx)
    await ctx.step("enter", _enter, ctx.run.id, label)
    await ctx.sleep(input["nap"])
    await ctx.step("leave", _leave, label)
    return input


async def invoker(input: Any, ctx: Context) -> Any:
    """Invokes input['child'] with input['child_input']; a FatalError from the invoke comes
    back as {"fatal": code, "message": ...}; any other error propagates."""
    try:
        return {"child_output": await ctx.invoke(input["child"], input.get("child_input"))}
    except FatalError as exc:
        return {"fatal": exc.code, "message": str(exc)}


async def invoker_uncaught(input: Any, ctx: Context) -> Any:
    """Invokes input['child']; a failed invoke ends this run with the invoke's error."""
    return await ctx.invoke(input["child"], input.get("child_input"))

