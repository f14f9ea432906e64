"""``ctx.patched`` / ``ctx.deprecate_patch`` (SPEC §14): the patch lifecycle over one run
recorded before the patch and one recorded with it: pre-patch code, patched code, deprecated,
removed; and a parallel branch asking while a sibling still has recorded entries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from runtime import workflow
from runtime.clock import ManualClock
from runtime.executor import Execution
from runtime.facts import HostServices, Outcome, RunFacts
from runtime.journal import Entry, Journal, StepAttempt, WaitpointRegistered, WaitpointResolved
from runtime.status import ResolutionSource, RunStatus
from runtime.workflow import definition_of

T0 = 1_700_000_000.0
calls: list[str] = []


class Host:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.clock = ManualClock(T0)

    async def record(self, entry: Entry) -> Sequence[WaitpointResolved]:
        await asyncio.sleep(0)
        self.entries.append(entry)
        return ()


async def run(wf: Any, entries: Sequence[Entry] = ()) -> tuple[Outcome, list[Entry]]:
    """Run (or replay) ``wf`` until it parks or ends; the journal it leaves behind."""
    host = Host()
    definition = definition_of(wf)
    facts = RunFacts("run-p", definition.id, definition.version, T0)
    ex = Execution(definition, {}, facts, Journal(list(entries)),
                   HostServices(record=host.record, clock=host.clock))
    try:
        outcome = await ex.advance()
    finally:
        await ex.close()
    return outcome, [*entries, *host.entries]


def woken(entries: list[Entry]) -> list[Entry]:
    """The journal after the run's sleep fired."""
    reg = next(e for e in entries if isinstance(e, WaitpointRegistered))
    assert reg.due_at is not None
    return [*entries, WaitpointResolved(reg.wp_id, reg.kind, reg.due_at, ResolutionSource.LIVE)]


def note(name: str) -> Any:
    def fn() -> str:
        calls.append(name)
        return name
    return fn


@workflow(id="patch.v1")
async def v1(input: dict, ctx) -> str:
    await ctx.step("a", note("a"))
    await ctx.sleep(10)
    return await ctx.step("b", note("b"))


@workflow(id="patch.v2")
async def v2(input: dict, ctx) -> str:
    await ctx.step("a", note("a"))
    if await ctx.patched("audit"):
        await ctx.step("audit", note("audit"))
    assert await ctx.patched("audit") == await ctx.patched("audit")  # memoized
    await ctx.sleep(10)
    return await ctx.step("b", note("b"))


@workflow(id="patch.v3")
async def v3(input: dict, ctx) -> str:
    await ctx.step("a", note("a"))
    ctx.deprecate_patch("audit")
    await ctx.step("audit", note("audit"))
    await ctx.sleep(10)
    return await ctx.step("b", note("b"))


@workflow(id="patch.v4")
async def v4(input: dict, ctx) -> str:
    await ctx.step("a", note("a"))
    await ctx.step("audit", note("audit"))
    await ctx.sleep(10)
    return await ctx.step("b", note("b"))


def markers(entries: list[Entry]) -> list[str]:
    return [e.step_id for e in entries
            if isinstance(e, StepAttempt) and e.step_id.startswith("patch:")]


async def test_the_patch_lifecycle_across_old_and_new_runs() -> None:
    calls.clear()
    parked, old = await run(v1)  # recorded before the patch existed, parked on its sleep
    assert parked.status == RunStatus.WAITING and calls == ["a"]
    parked, new = await run(v2)  # a run started on the patched code
    assert parked.status == RunStatus.WAITING and markers(new) == ["patch:audit"]
    assert calls == ["a", "a", "audit"]

    calls.clear()
    # The old run, woken on the patched code, went past the patch point on old code.
    done, _ = await run(v2, woken(old))
    assert (done.status, done.divergence, calls) == (RunStatus.COMPLETED, (), ["b"])
    calls.clear()
    done, _ = await run(v2, woken(new))  # the new one keeps the new path (its marker)
    assert (done.status, done.divergence, calls) == (RunStatus.COMPLETED, (), ["b"])

    calls.clear()
    done, _ = await run(v3, woken(new))  # deprecated: a journal with the marker replays
    assert (done.status, done.divergence, calls) == (RunStatus.COMPLETED, (), ["b"])
    calls.clear()
    parked, fresh = await run(v3)  # and a new run records no marker any more
    assert parked.status == RunStatus.WAITING and markers(fresh) == []
    done, _ = await run(v3, woken(fresh))
    assert done.status == RunStatus.COMPLETED

    calls.clear()
    held, _ = await run(v4, woken(new))  # removed while a live run still carries the marker
    assert held.status == RunStatus.PAUSED
    assert held.error is not None
    detail = held.error["data"]["divergence"]
    assert detail["kind"] == "inserted" and detail["unconsumed"]["patch_ids"] == ["audit"]
    assert calls == []


@workflow(id="patch.parallel")
async def parallel(input: dict, ctx) -> list:
    async def left() -> Any:
        await ctx.step("l1", note("l1"))
        return await ctx.patched("p")

    async def right() -> Any:
        await ctx.step("r1", note("r1"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return await ctx.step("r2", note("r2"))

    return list(await asyncio.gather(left(), right()))


async def test_a_branch_asking_while_a_sibling_replays_gets_the_frontier_answer() -> None:
    calls.clear()
    recorded: list[Entry] = [StepAttempt("l1", 0, 1, "ok", "l1", None, T0, T0),
                             StepAttempt("r1", 1, 1, "ok", "r1", None, T0, T0),
                             StepAttempt("r2", 2, 1, "ok", "r2", None, T0, T0)]
    done, entries = await run(parallel, recorded)
    # Nothing of the left branch was recorded past the patch call: it is new there.
    assert (done.status, done.output, done.divergence) == (
        RunStatus.COMPLETED, [True, "r2"], ())
    assert markers(entries) == ["patch:p"] and calls == []
