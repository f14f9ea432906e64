from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from runtime import RateLimit, RateLimitExceeded, RetryPolicy, workflow
from runtime.clock import ManualClock
from runtime.executor import Execution
from runtime.facts import HostServices, Limits, RunFacts
from runtime.journal import Entry, Journal, StepAttempt, WaitpointResolved
from runtime.status import ResolutionSource, RunStatus
from runtime.testing import run_workflow_for_test
from runtime.workflow import definition_of

T0 = 1_700_000_000.0
body_starts: list[str] = []
side_effects: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    body_starts.clear()
    side_effects.clear()


class Host:
    """A minimal host: records entries in memory and can fail on demand."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.clock = ManualClock(T0)
        self.fail_on: type | None = None

    async def record(self, entry: Entry) -> Sequence[WaitpointResolved]:
        await asyncio.sleep(0)  # a real commit yields to the loop
        if self.fail_on is not None and isinstance(entry, self.fail_on):
            raise OSError("disk on fire")
        self.entries.append(entry)
        return ()

    def services(self, **kw: Any) -> HostServices:
        return HostServices(record=self.record, clock=self.clock, **kw)


def execution(wf: Any, host: Host, entries: Sequence[Entry] = (), **kw: Any) -> Execution:
    definition = definition_of(wf)
    facts = RunFacts("run-x", definition.id, definition.version, T0)
    return Execution(definition, {}, facts, Journal(list(entries)), host.services(**kw))


@workflow(id="ex-chain")
async def chain_wf(input: dict, ctx) -> list:
    body_starts.append("start")
    out = []
    for i in range(3):
        out.append(await ctx.step(f"s{i}", side_effects.append, f"s{i}"))
        await ctx.wait_for_event(f"go{i}")
    return out


async def test_each_entry_reaches_the_host_before_the_body_continues() -> None:
    host = Host()
    seen_by_step: list[list[str]] = []

    def snapshot(name: str) -> str:
        seen_by_step.append([e.step_id for e in host.entries if isinstance(e, StepAttempt)])
        return name

    @workflow(id="ex-order")
    async def order_wf(input: dict, ctx) -> None:
        for name in ("a", "b", "c"):
            await ctx.step(name, snapshot, name)

    outcome = await execution(order_wf, host).advance()
    assert outcome.status == RunStatus.COMPLETED
    assert seen_by_step == [[], ["a"], ["a", "b"]]


async def test_warm_resume_continues_without_replaying_the_body() -> None:
    host = Host()
    ex = execution(chain_wf, host)
    for i in range(3):
        outcome = await ex.advance()
        assert outcome.status == RunStatus.WAITING
        assert [w.wp_id for w in outcome.waiting_on] == [f"event:go{i}:0"]
        res = WaitpointResolved(f"event:go{i}:0", outcome.waiting_on[0].kind, T0,
                                ResolutionSource.LIVE, payload=i)
        host.entries.append(res)
        ex.resolve(res)
    outcome = await ex.advance()
    assert outcome.status == RunStatus.COMPLETED
    assert body_starts == ["start"]
    assert side_effects == ["s0", "s1", "s2"]
    warm_journal = list(host.entries)

    # The same run replayed cold from its journal reaches the same end with no new side effect.
    cold_host = Host()
    cold = await execution(chain_wf, cold_host, warm_journal).advance()
    assert cold.status == RunStatus.COMPLETED and cold.output == outcome.output
    assert cold_host.entries == [] and side_effects == ["s0", "s1", "s2"]
    assert cold.divergence == ()


async def test_warm_and_cold_runs_produce_identical_journals() -> None:
    events = {f"go{i}": i for i in range(3)}
    warm = await run_workflow_for_test(chain_wf, {}, events=events, replay="warm")
    cold = await run_workflow_for_test(chain_wf, {}, events=events, replay="cold")
    assert warm.journal == cold.journal
    assert body_starts == ["start", "start", "start", "start", "start"]  # warm: 1, cold: 4


@workflow(id="ex-swallow")
async def swallow_wf(input: dict, ctx) -> str:
    try:
        await ctx.wait_for_event("never")
    except Exception:
        return "swallowed by except Exception"
    return "got event"


@workflow(id="ex-swallow-base")
async def swallow_base_wf(input: dict, ctx) -> str:
    try:
        await ctx.wait_for_event("never")
    except BaseException:
        await ctx.step("after", side_effects.append, "after")
        return "swallowed by except BaseException"
    return "got event"


@pytest.mark.parametrize("wf", [swallow_wf, swallow_base_wf])
async def test_a_body_that_swallows_the_pending_signal_still_parks(wf: Any) -> None:
    host = Host()
    ex = execution(wf, host)
    outcome = await ex.advance()
    assert outcome.status == RunStatus.WAITING
    await ex.close()  # park cold: the signal is thrown into the body
    assert ex.done
    assert side_effects == []
    assert not any(isinstance(e, StepAttempt) for e in host.entries)
    res = await run_workflow_for_test(wf, {}, pause_on_wait=True, replay="cold")
    assert res.status == RunStatus.WAITING


async def test_divergence_is_reported_as_data_not_a_crash() -> None:
    recorded = [
        StepAttempt("b", 0, 1, "ok", "B", None, T0, T0),
        StepAttempt("a", 1, 1, "ok", "A", None, T0, T0),
        StepAttempt("gone", 2, 1, "ok", 1, None, T0, T0),
    ]

    @workflow(id="ex-diverge")
    async def diverge_wf(input: dict, ctx) -> list:
        return [await ctx.step("a", str), await ctx.step("b", str)]

    outcome = await execution(diverge_wf, Host(), recorded).advance()
    # Held, not completed: the body ended before reaching "gone" (SPEC §3, §14).
    assert outcome.status == RunStatus.PAUSED and outcome.output is None
    unreached = {"kind": "unreached", "step_ids": ["gone"], "waitpoint_ids": []}
    assert outcome.divergence == (
        {"kind": "position", "step_id": "a", "recorded_position": 1, "position": 0},
        {"kind": "position", "step_id": "b", "recorded_position": 0, "position": 1},
        unreached,
    )
    assert outcome.error is not None and outcome.error["code"] == "NONDETERMINISM"
    assert outcome.error["data"] == {"divergence": unreached}


@workflow(id="ex-cancel")
async def cancel_wf(input: dict, ctx) -> None:
    undo = lambda out: side_effects.append(f"undo {out}")  # noqa: E731
    await ctx.step("booked", lambda: "b1", compensate=undo)

    async def forever() -> None:
        side_effects.append("long step started")
        await asyncio.sleep(3600)

    try:
        await ctx.step("long", forever)
    except Exception:
        side_effects.append("caught")


@pytest.mark.parametrize("compensate", [True, False])
async def test_cancel_stops_the_inflight_step_and_compensates(compensate: bool) -> None:
    host = Host()
    ex = execution(cancel_wf, host)
    task = asyncio.ensure_future(ex.advance())
    while "long step started" not in side_effects:
        await asyncio.sleep(0)
    ex.cancel("operator said so", compensate=compensate)
    outcome = await task
    assert outcome.status == RunStatus.CANCELLED
    assert outcome.error["code"] == "CANCELLED" and "operator" in outcome.error["message"]
    assert "caught" not in side_effects
    assert ("undo b1" in side_effects) is compensate
    assert not any(isinstance(e, StepAttempt) and e.step_id == "long" for e in host.entries)


async def test_cancel_of_a_cold_parked_run_replays_then_compensates() -> None:
    recorded = [StepAttempt("booked", 0, 1, "ok", "b1", None, T0, T0)]

    @workflow(id="ex-cancel-parked")
    async def parked_wf(input: dict, ctx) -> None:
        await ctx.step("booked", str, compensate=lambda out: side_effects.append(f"undo {out}"))
        await ctx.wait_for_event("never")

    ex = execution(parked_wf, Host(), recorded)
    ex.cancel()
    outcome = await ex.advance()
    assert outcome.status == RunStatus.CANCELLED and side_effects == ["undo b1"]


async def test_storage_failure_is_not_swallowable_by_the_body() -> None:
    @workflow(id="ex-host-failure")
    async def wf(input: dict, ctx) -> str:
        try:
            await ctx.step("a", str)
        except Exception:
            return "continued after a lost write"
        return "ok"

    host = Host()
    host.fail_on = StepAttempt
    from runtime._signals import HostFailure

    with pytest.raises(HostFailure) as info:
        await execution(wf, host).advance()
    assert isinstance(info.value.cause, OSError)


@workflow(id="ex-timeout", timeout="50ms")
async def wf_timeout(input: dict, ctx) -> None:
    await ctx.step("undoable", str, compensate=lambda out: side_effects.append("undo"))
    await ctx.step("slow", asyncio.sleep, 5)


async def test_workflow_compute_budget_ends_the_run_timed_out_after_compensation() -> None:
    res = await run_workflow_for_test(wf_timeout, {})
    assert res.status == RunStatus.TIMED_OUT
    assert res.error["code"] == "WORKFLOW_TIMEOUT"
    assert side_effects == ["undo"]


@workflow(id="ex-rate")
async def rate_wf(input: dict, ctx) -> list:
    limit = RateLimit("api", limit=2, window="1s", on_limit=input["on_limit"])
    out = []
    for i in range(3):
        out.append(await ctx.step(f"call{i}", lambda i=i: i, rate_limit=limit,
                                  retry=RetryPolicy(max=input.get("max", 1))))
    return out


async def test_rate_limit_queue_waits_for_tokens() -> None:
    res = await run_workflow_for_test(rate_wf, {"on_limit": "queue"})
    assert res.output == [0, 1, 2]


async def test_rate_limit_fail_raises_retryable_rate_limited() -> None:
    res = await run_workflow_for_test(rate_wf, {"on_limit": "fail"})
    assert res.status == RunStatus.FAILED and res.error["code"] == "RATE_LIMITED"
    res = await run_workflow_for_test(rate_wf, {"on_limit": "fail", "max": 2})
    assert res.status == RunStatus.COMPLETED  # retried after retry_after; the bucket refilled
    assert isinstance(RateLimitExceeded("x"), Exception)


def test_rate_limit_units_above_limit_is_an_immediate_error() -> None:
    with pytest.raises(ValueError, match="units=5 exceeds limit=2"):
        RateLimit("k", limit=2, window="1s", units=5)


def square(x: int) -> int:
    return x * x


@workflow(id="ex-process")
async def process_wf(input: dict, ctx) -> int:
    return await ctx.step("sq", square, 7, runtime="process")


class ThreadPoolRunner:
    """Stands in for the daemon's process pool (same interface, no processes in unit tests)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1)

    async def run(self, fn: Any, args: tuple) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, *args))


async def test_process_runtime_without_a_pool_fails_clearly_and_uses_the_pool_if_given() -> None:
    res = await run_workflow_for_test(process_wf, {})
    assert res.status == RunStatus.FAILED
    assert res.error["code"] == "PROCESS_RUNTIME_UNAVAILABLE"
    assert "process_workers" in res.error["message"]
    res = await run_workflow_for_test(process_wf, {}, process_runner=ThreadPoolRunner())
    assert res.output == 49


async def test_process_runtime_needs_a_module_level_function() -> None:
    @workflow(id="ex-process-local")
    async def wf(input: dict, ctx) -> int:
        return await ctx.step("sq", lambda: 1, runtime="process")

    res = await run_workflow_for_test(wf, {}, process_runner=ThreadPoolRunner())
    assert res.error["code"] == "INVALID_STEP"


async def test_payload_and_journal_limits_fail_clearly() -> None:
    @workflow(id="ex-limits")
    async def wf(input: dict, ctx) -> None:
        await ctx.step("big", lambda: "x" * 100)

    res = await run_workflow_for_test(wf, {}, limits=Limits(max_payload_bytes=50))
    assert res.error["code"] == "PAYLOAD_TOO_LARGE" and "50" in res.error["message"]
    res = await run_workflow_for_test(chain_wf, {}, events={"go0": 1},
                                      limits=Limits(max_journal_entries=2))
    assert res.error["code"] == "JOURNAL_LIMIT"


async def test_ctx_facts_and_deterministic_values_are_stable_across_replays(replay: str) -> None:
    @workflow(id="ex-facts", version="v7")
    async def wf(input: dict, ctx) -> dict:
        r1, u1 = ctx.random(), ctx.random_uuid()
        await ctx.sleep("1s")
        return {"r": r1, "u": u1, "wf": [ctx.workflow.id, ctx.workflow.version],
                "run": ctx.run.id, "inv": ctx.invocation_count, "cancelled": ctx.is_cancelled}

    res = await run_workflow_for_test(wf, {}, run_id="run_abc", replay=replay)
    assert res.output["r"] == 0.8800948064308614  # first vector draw for run_abc
    assert res.output["wf"] == ["ex-facts", "v7"] and res.output["run"] == "run_abc"
    assert res.output["cancelled"] is False
