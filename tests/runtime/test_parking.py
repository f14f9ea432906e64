"""A run parks when every branch of its body is blocked on an unresolved ctx waitpoint, known
exactly (SPEC §3): pending host work or a body timer means "still running", and a body blocked on
something nobody will finish fails NON_DURABLE_AWAIT."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import pytest

from runtime import workflow
from runtime.clock import ManualClock
from runtime.executor import Execution
from runtime.facts import HostServices, Limits, RunFacts
from runtime.journal import Entry, Journal, StepAttempt, WaitpointRegistered, WaitpointResolved
from runtime.status import ResolutionSource, RunStatus, WaitpointKind
from runtime.testing import resume_workflow_for_test, run_workflow_for_test
from runtime.workflow import definition_of

T0 = 1_700_000_000.0
undone: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    undone.clear()


class Host:
    """Records entries in memory; each commit yields to the loop as a real one does."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.clock = ManualClock(T0)

    async def record(self, entry: Entry) -> Sequence[WaitpointResolved]:
        await asyncio.sleep(0)
        self.entries.append(entry)
        return ()

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.entries]


def execution(wf: Any, host: Host, entries: Sequence[Entry] = (), **limits: Any) -> Execution:
    definition = definition_of(wf)
    facts = RunFacts("run-p", definition.id, definition.version, T0)
    services = HostServices(record=host.record, clock=host.clock, limits=Limits(**limits))
    return Execution(definition, {}, facts, Journal(list(entries)), services)


def resolution(wp_id: str, payload: Any) -> WaitpointResolved:
    return WaitpointResolved(wp_id, WaitpointKind.EVENT, T0, ResolutionSource.LIVE, payload)


@workflow(id="busy-sibling")
async def busy_wf(input: Any, ctx: Any) -> list[Any]:
    async def other() -> str:
        await asyncio.sleep(0.05)  # any await that is not a ctx operation
        return str(await ctx.step("after", str.upper, "x"))

    return list(await asyncio.gather(ctx.wait_for_event("go"), other()))


async def test_a_sibling_still_running_keeps_the_run_running_until_it_blocks() -> None:
    host = Host()
    ex = execution(busy_wf, host)
    outcome = await ex.advance()
    assert outcome.status == RunStatus.WAITING
    assert [w.wp_id for w in outcome.waiting_on] == ["event:go:0"]
    # The sibling's step was recorded before the run said it was waiting, and nothing after.
    assert host.kinds() == ["WaitpointRegistered", "StepAttempt"]
    await asyncio.sleep(0.1)
    assert len(host.entries) == 2
    ex.resolve(resolution("event:go:0", "went"))
    outcome = await ex.advance()
    assert outcome.status == RunStatus.COMPLETED and outcome.output == ["went", "X"]


async def test_busy_sibling_parks_after_its_step_warm_and_cold(replay: str) -> None:
    res = await run_workflow_for_test(busy_wf, {}, pause_on_wait=True, replay=replay)
    assert res.status == RunStatus.WAITING and res.steps["after"]["output"] == "X"
    res = await resume_workflow_for_test(res, events={"go": "went"})
    assert res.status == RunStatus.COMPLETED and res.output == ["went", "X"]


@workflow(id="park-wait-for")
async def wait_for_wf(input: Any, ctx: Any) -> str:
    try:
        await asyncio.wait_for(ctx.wait_for_event("x"), timeout=0.3)
    except TimeoutError:
        return str(await ctx.step("after-timeout", lambda: "timed out, went on"))
    return "got x"


async def test_asyncio_wait_for_on_a_waitpoint_times_out_and_the_body_goes_on(
    replay: str,
) -> None:
    started = time.monotonic()
    res = await run_workflow_for_test(wait_for_wf, {}, replay=replay)
    assert res.status == RunStatus.COMPLETED and res.output == "timed out, went on"
    assert time.monotonic() - started >= 0.3
    # The abandoned waitpoint stays in the journal, as it is in storage.
    assert [e.wp_id for e in res.journal if isinstance(e, WaitpointRegistered)] == ["event:x:0"]


async def test_a_resolution_before_the_timeout_cancels_the_body_timer() -> None:
    host = Host()

    @workflow(id="park-wait-for-long")
    async def wf(input: Any, ctx: Any) -> Any:
        return await asyncio.wait_for(ctx.wait_for_event("x"), timeout=30)

    ex = execution(wf, host)
    started = time.monotonic()
    advancing = asyncio.ensure_future(ex.advance())
    while not host.entries:
        await asyncio.sleep(0)
    ex.resolve(resolution("event:x:0", "in time"))  # delivered while advance() runs
    outcome = await advancing
    assert outcome.status == RunStatus.COMPLETED and outcome.output == "in time"
    assert time.monotonic() - started < 5


async def test_asyncio_sleep_in_a_body_keeps_it_running_then_it_parks() -> None:
    host = Host()

    @workflow(id="park-sleep")
    async def wf(input: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.02)
        await ctx.step("after-sleep", lambda: 1)
        return await ctx.wait_for_event("x")

    ex = execution(wf, host)
    outcome = await ex.advance()
    assert outcome.status == RunStatus.WAITING
    assert host.kinds() == ["StepAttempt", "WaitpointRegistered"]
    await ex.close()


@workflow(id="park-deep")
async def deep_wf(input: Any, ctx: Any) -> Any:
    async def leaf(item: int, index: int) -> Any:
        await asyncio.sleep(0.005 * (item % 3))  # foreign awaits deep down
        await ctx.step(f"leaf-{item}", lambda: item)
        await asyncio.sleep(0)
        return await ctx.wait_for_event(f"e{item}")

    async def group(items: list[int], index: int) -> list[Any]:
        return await ctx.parallel(items, leaf, concurrency=2)

    async def late() -> str:
        for _ in range(20):  # many loop turns of pure computation, then a step
            await asyncio.sleep(0)
        return str(await ctx.step("late", lambda: "late"))

    nested = ctx.parallel([[1, 2, 3], [4, 5], [6]], group)
    return list(await asyncio.gather(nested, late()))


async def test_deep_nesting_parks_only_when_every_branch_is_blocked(replay: str) -> None:
    res = await run_workflow_for_test(deep_wf, {}, pause_on_wait=True, replay=replay)
    assert res.status == RunStatus.WAITING
    assert set(res.steps) == {"late", "leaf-1", "leaf-2", "leaf-4", "leaf-5", "leaf-6"}
    waiting = {w["id"] for w in res.pause["waiting_on"]}
    assert waiting == {"event:e1:0", "event:e2:0", "event:e4:0", "event:e5:0", "event:e6:0"}
    res = await resume_workflow_for_test(res, events={f"e{i}": i * 10 for i in range(1, 7)})
    assert res.status == RunStatus.COMPLETED
    assert res.output == [[[10, 20, 30], [40, 50], [60]], "late"]


@workflow(id="park-deadlock")
async def deadlock_wf(input: Any, ctx: Any) -> None:
    if input.get("compensate"):
        await ctx.step("booked", lambda: "b1", compensate=lambda out: undone.append(out))
    await asyncio.Event().wait()  # nothing will ever set it


async def test_a_body_blocked_on_a_foreign_awaitable_fails_non_durable_await() -> None:
    res = await run_workflow_for_test(deadlock_wf, {}, limits=Limits(deadlock_timeout=0.05))
    assert res.status == RunStatus.FAILED
    error = res.error
    assert error["code"] == "NON_DURABLE_AWAIT" and error["name"] == "NonDurableAwait"
    line = deadlock_wf.__code__.co_firstlineno + 4
    assert f"test_parking.py:{line} in deadlock_wf()" in error["message"]
    assert "Event.wait" in error["message"]


async def test_the_deadlock_runs_compensations_registered_before_it(replay: str) -> None:
    res = await run_workflow_for_test(
        deadlock_wf, {"compensate": True}, replay=replay, limits=Limits(deadlock_timeout=0.05)
    )
    assert res.status == RunStatus.COMPENSATED
    assert res.error["code"] == "NON_DURABLE_AWAIT"
    assert undone == ["b1"] and res.compensations[0]["step_id"] == "booked"


async def test_a_body_that_swallows_the_deadlock_cancel_still_fails() -> None:
    @workflow(id="park-deadlock-stubborn")
    async def wf(input: Any, ctx: Any) -> str:
        with contextlib.suppress(BaseException):
            await asyncio.Future()
        await asyncio.Future()  # and again
        return "never"

    res = await run_workflow_for_test(wf, {}, limits=Limits(deadlock_timeout=0.05))
    assert res.status == RunStatus.FAILED and res.error["code"] == "NON_DURABLE_AWAIT"


async def test_a_body_waiting_on_its_own_task_is_not_a_deadlock() -> None:
    @workflow(id="park-own-task")
    async def wf(input: Any, ctx: Any) -> Any:
        event = asyncio.Event()

        async def setter() -> None:
            await asyncio.sleep(0.01)
            event.set()

        task = asyncio.ensure_future(setter())
        await event.wait()
        await task
        return await ctx.step("done", lambda: "ok")

    res = await run_workflow_for_test(wf, {}, limits=Limits(deadlock_timeout=0.05))
    assert res.status == RunStatus.COMPLETED and res.output == "ok"


async def test_parked_runs_still_cancel_and_compensate_warm_and_cold(replay: str) -> None:
    @workflow(id="park-cancel")
    async def wf(input: Any, ctx: Any) -> None:
        await ctx.step("booked", lambda: "b1", compensate=lambda out: undone.append(out))
        await ctx.wait_for_event("never")

    host = Host()
    ex = execution(wf, host)
    assert (await ex.advance()).status == RunStatus.WAITING
    if replay == "cold":
        await ex.close()
        ex = execution(wf, host, host.entries)
    ex.cancel("operator")
    outcome = await ex.advance()
    assert outcome.status == RunStatus.CANCELLED and undone == ["b1"]
    assert [type(c).__name__ for c in outcome.compensations] == ["CompensationRan"]
    assert [e.step_id for e in host.entries if isinstance(e, StepAttempt)] == ["booked"]


@workflow(id="park-cancel-running")
async def cancel_running_wf(input: Any, ctx: Any) -> None:
    await ctx.step("booked", lambda: "b1", compensate=lambda out: undone.append(out))

    async def forever() -> None:
        undone.append("long step started")
        await asyncio.sleep(3600)

    await ctx.step("long", forever)


async def test_cancel_stops_a_running_step_after_a_replay_too(replay: str) -> None:
    host = Host()
    recorded = [StepAttempt("booked", 0, 1, "ok", "b1", None, T0, T0)] if replay == "cold" else []
    ex = execution(cancel_running_wf, host, recorded)
    advancing = asyncio.ensure_future(ex.advance())
    while "long step started" not in undone:
        await asyncio.sleep(0)
    ex.cancel("stop")
    outcome = await advancing
    assert outcome.status == RunStatus.CANCELLED and undone == ["long step started", "b1"]
    assert not any(isinstance(e, StepAttempt) and e.step_id == "long" for e in host.entries)


async def test_a_body_that_gives_up_on_a_step_cancels_it_and_nothing_is_recorded() -> None:
    host = Host()

    async def slow() -> str:
        await asyncio.sleep(3600)
        return "late"

    @workflow(id="park-give-up")
    async def wf(input: Any, ctx: Any) -> str:
        try:
            await asyncio.wait_for(ctx.step("slow", slow), timeout=0.02)
        except TimeoutError:
            return str(await ctx.step("fallback", lambda: "fallback"))
        return "slow won"

    outcome = await execution(wf, host).advance()
    assert outcome.status == RunStatus.COMPLETED and outcome.output == "fallback"
    assert [e.step_id for e in host.entries if isinstance(e, StepAttempt)] == ["fallback"]


async def test_a_commit_the_body_stopped_waiting_for_still_reaches_the_journal() -> None:
    class SlowHost(Host):
        async def record(self, entry: Entry) -> Sequence[WaitpointResolved]:
            await asyncio.sleep(0.05)  # the body's wait_for gives up while this commits
            self.entries.append(entry)
            return ()

    @workflow(id="park-abandoned-commit")
    async def wf(input: Any, ctx: Any) -> str:
        try:
            await asyncio.wait_for(ctx.wait_for_event("x"), timeout=0.01)
        except TimeoutError:
            return "gave up"
        return "got x"

    host = SlowHost()
    ex = execution(wf, host)
    outcome = await ex.advance()
    assert outcome.status == RunStatus.COMPLETED and outcome.output == "gave up"
    # The registration was committed; the journal says so too, as storage does.
    assert host.kinds() == ["WaitpointRegistered"]
    assert list(ex.journal.registrations) == ["event:x:0"]


async def test_close_stops_a_body_that_swallows_the_signal(monkeypatch: Any) -> None:
    import runtime.executor as executor_module

    monkeypatch.setattr(executor_module, "_CLOSE_GRACE", 0.05)

    @workflow(id="park-stubborn-close")
    async def wf(input: Any, ctx: Any) -> None:
        try:
            await ctx.wait_for_event("x")
        except BaseException:
            await asyncio.Event().wait()  # swallow Suspended, then hang on something foreign

    ex = execution(wf, Host())
    assert (await ex.advance()).status == RunStatus.WAITING
    started = time.monotonic()
    await ex.close()
    assert ex.done and time.monotonic() - started < 1.5


@workflow(id="park-freed")
async def freed_wf(input: Any, ctx: Any) -> str:
    await ctx.wait_for_event("x")
    return str(await ctx.step("after", str.upper, "x"))


@pytest.mark.parametrize("end", ["close", "cancel", "resolve"])
async def test_a_parked_run_is_freed_by_reference_counting(end: str) -> None:
    """A daemon parks thousands of runs and closes the ones over its warm budget: each must be
    freed when dropped, not left in a cycle for a full collection (W5: 8,400 closed runs held
    ~60 MB at 20k parked). The signal thrown in through the waitpoint must not keep them."""
    import gc
    import weakref

    host = Host()
    gone = weakref.ref(host)  # the execution's services hold the host
    ex = execution(freed_wf, host)
    assert (await ex.advance()).status == RunStatus.WAITING
    if end == "close":
        await ex.close()
    elif end == "cancel":
        ex.cancel("stop")
        assert (await ex.advance()).status == RunStatus.CANCELLED
    else:
        ex.resolve(resolution("event:x:0", "went"))
        assert (await ex.advance()).status == RunStatus.COMPLETED
    gc.disable()
    try:
        del ex, host
        await asyncio.sleep(0)
        assert gone() is None
    finally:
        gc.enable()
