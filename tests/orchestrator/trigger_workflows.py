"""Workflow bodies and definitions for the event-trigger tests (SPEC §2a, second half) on a real
engine.

Nothing here is registered anywhere: :func:`define` builds a
:class:`~runtime.workflow.WorkflowDefinition` whose ``on_event`` / ``cancel_on`` /
``concurrency`` are checked as ``@workflow`` checks them, and :func:`registry` puts a test's
definitions in a new private :class:`~runtime.workflow.Registry`.

The bodies note what they do in module state the test reads: :data:`SEEN` (run id → the input
its step saw, once per run), :data:`STARTED` (run ids in the order their first step ran),
:data:`COMPENSATED` (run ids whose ``reserve`` step was compensated) and :data:`MATCH_CALLS`
(calls of :func:`counted_match`). Call :func:`reset` between tests.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from runtime import Context
from runtime.flow import CancelOn, Concurrency, OnEvent
from runtime.workflow import Registry, WorkflowDefinition, WorkflowFn, _concurrency, _options

SEEN: dict[str, Any] = {}
STARTED: list[str] = []
COMPENSATED: list[str] = []
MATCH_CALLS: Counter[str] = Counter()
_GATES: dict[str, asyncio.Event] = {}
_ENTERED: dict[str, asyncio.Event] = {}


def reset() -> None:
    SEEN.clear()
    STARTED.clear()
    COMPENSATED.clear()
    MATCH_CALLS.clear()
    _GATES.clear()
    _ENTERED.clear()


def define(
    id: str,
    fn: WorkflowFn,
    *,
    on_event: OnEvent | Sequence[OnEvent] | None = None,
    cancel_on: CancelOn | Sequence[CancelOn] | None = None,
    concurrency: Concurrency | Sequence[Concurrency] | None = None,
    input_validator: Callable[[Any], Any] | None = None,
) -> WorkflowDefinition:
    """A definition of ``fn`` under ``id`` with these options, checked like ``@workflow``."""
    where = f"workflow {id!r}"
    return WorkflowDefinition(
        id=id,
        fn=fn,
        version="1",
        concurrency=_concurrency(id, concurrency),
        on_event=_options(where, "on_event", OnEvent, on_event),
        cancel_on=_options(where, "cancel_on", CancelOn, cancel_on),
        input_validator=input_validator,
        origin=f"{__name__}:{id}",
    )


def registry(*definitions: WorkflowDefinition) -> Registry:
    reg = Registry()
    for d in definitions:
        reg.register(d)
    return reg


# --- cancel_on match callables -------------------------------------------------------------------


def by_user(run_input: Any) -> Any:
    return {"user_id": run_input["user_id"]}


def counted_match(run_input: Any) -> Any:
    """``{"user_id": input["user_id"]}``, counting each call in :data:`MATCH_CALLS`."""
    MATCH_CALLS[run_input["user_id"]] += 1
    return {"user_id": run_input["user_id"]}


def broken_match(run_input: Any) -> Any:
    raise KeyError("user_id")


def scalar_match(run_input: Any) -> Any:
    return run_input["user_id"]  # a string: not a JSON object


# --- gates: a step that stays in flight until the test lets it go --------------------------------


def entered(run_id: str) -> asyncio.Event:
    """Set once ``run_id``'s ``work`` step is in flight."""
    return _ENTERED.setdefault(run_id, asyncio.Event())


def release(run_id: str) -> None:
    _GATES.setdefault(run_id, asyncio.Event()).set()


# --- steps ---------------------------------------------------------------------------------------


def _see(run_id: str, run_input: Any) -> None:
    assert run_id not in SEEN, f"{run_id}'s step ran twice"
    SEEN[run_id] = run_input
    STARTED.append(run_id)


def _enter(run_id: str) -> str:
    STARTED.append(run_id)
    return run_id


def _reserve(run_id: str) -> str:
    return run_id


def _release(run_id: str) -> None:
    COMPENSATED.append(run_id)


async def _work(run_id: str) -> str:
    entered(run_id).set()
    await _GATES.setdefault(run_id, asyncio.Event()).wait()
    return run_id


# --- bodies --------------------------------------------------------------------------------------


async def record(input: Any, ctx: Context) -> Any:
    """One step that notes the input in :data:`SEEN`; returns the input."""
    await ctx.step("see", _see, ctx.run.id, input)
    return input


async def held(input: Any, ctx: Context) -> Any:
    """enter, a compensated 'reserve', then parks on the signal 'go'."""
    await ctx.step("enter", _enter, ctx.run.id)
    await ctx.step("reserve", _reserve, ctx.run.id, compensate=_release)
    return await ctx.wait_for_signal("go")


async def busy(input: Any, ctx: Context) -> Any:
    """A compensated 'reserve', then a step 'work' that stays in flight until released."""
    await ctx.step("reserve", _reserve, ctx.run.id, compensate=_release)
    return await ctx.step("work", _work, ctx.run.id)


async def parent(input: Any, ctx: Context) -> Any:
    """Invokes ``input["child"]`` with ``input["child_input"]`` and returns its output."""
    return await ctx.invoke(input["child"], input["child_input"])


async def awaits_order(input: Any, ctx: Context) -> Any:
    """Parks on the event 'order.paid' whose payload matches ``{"order": input["order"]}``."""
    return await ctx.wait_for_event("order.paid", match={"order": input["order"]})
