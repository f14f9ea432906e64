from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime

import pytest

from runtime import (
    FatalError,
    RetryableError,
    RetryPolicy,
    StepTimeoutError,
    current_step,
    workflow,
)
from runtime.journal import StepAttempt, WaitpointRegistered
from runtime.retry import next_delay
from runtime.status import RunStatus, WaitpointKind
from runtime.testing import run_workflow_for_test

calls: dict[str, int] = {}


def _count(name: str) -> int:
    calls[name] = calls.get(name, 0) + 1
    return calls[name]


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


@workflow(id="steps-memo")
async def memo_wf(input: dict, ctx) -> dict:
    a = await ctx.step("a", lambda: _count("a"))
    await ctx.sleep("1s")
    b = await ctx.step("b", lambda: _count("b"))
    await ctx.sleep("1s")
    return {"a": a, "b": b}


async def test_completed_step_is_not_run_again_on_replay(replay: str) -> None:
    res = await run_workflow_for_test(memo_wf, {}, replay=replay)
    assert res.status == RunStatus.COMPLETED
    assert res.output == {"a": 1, "b": 1}
    assert calls == {"a": 1, "b": 1}


@workflow(id="steps-thread")
async def thread_wf(input: dict, ctx) -> dict:
    def sync_fn(x: int) -> dict:
        info = current_step()
        return {"x": x, "thread": threading.current_thread() is not threading.main_thread(),
                "step": info.step_id, "attempt": info.attempt, "run": info.run_id}

    async def async_fn() -> bool:
        return threading.current_thread() is threading.main_thread()

    return {"sync": await ctx.step("s", sync_fn, 5), "async_inline": await ctx.step("a", async_fn)}


async def test_sync_steps_run_in_a_thread_and_async_steps_inline() -> None:
    res = await run_workflow_for_test(thread_wf, {}, run_id="r1")
    assert res.output == {
        "sync": {"x": 5, "thread": True, "step": "s", "attempt": 1, "run": "r1"},
        "async_inline": True,
    }


def test_current_step_outside_a_step_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="outside a step"):
        current_step()


@workflow(id="steps-json")
async def json_wf(input: dict, ctx) -> dict:
    t = await ctx.step("t", lambda: (1, "two", (3,)))
    await ctx.sleep("1s")
    return {"t": t, "is_list": isinstance(t, list)}


async def test_tuple_comes_back_as_list_live_and_on_replay(replay: str) -> None:
    res = await run_workflow_for_test(json_wf, {}, replay=replay)
    assert res.output == {"t": [1, "two", [3]], "is_list": True}


@workflow(id="steps-not-json")
async def not_json_wf(input: dict, ctx) -> None:
    await ctx.step("when", lambda: datetime(2020, 1, 1), retry=RetryPolicy(max=3))


async def test_non_json_result_fails_the_step_naming_step_and_type() -> None:
    res = await run_workflow_for_test(not_json_wf, {})
    assert res.status == RunStatus.FAILED
    assert res.error["code"] == "NOT_SERIALIZABLE"
    assert "'when'" in res.error["message"] and "datetime" in res.error["message"]
    assert res.steps["when"]["attempt"] == 1  # never retried: another attempt cannot help


@workflow(id="steps-dup")
async def dup_wf(input: dict, ctx) -> None:
    await ctx.step("x", lambda: 1)
    await ctx.step("x", lambda: 2)


async def test_same_step_id_twice_is_a_fatal_duplicate_step_id() -> None:
    res = await run_workflow_for_test(dup_wf, {})
    assert res.status == RunStatus.FAILED
    assert res.error["code"] == "DUPLICATE_STEP_ID"
    assert res.error["name"] == "FatalError"


def flaky(name: str, fail_times: int, exc: type[Exception] = RetryableError) -> int:
    n = _count(name)
    if n <= fail_times:
        raise exc(f"attempt {n} failed")
    return n


@workflow(id="steps-retry")
async def retry_wf(input: dict, ctx) -> int:
    policy = RetryPolicy(max=input["max"], backoff=input["backoff"], initial="1s", max_delay="3s")
    return await ctx.step("f", flaky, "f", input["fails"], retry=policy)


async def test_retries_until_success_and_records_every_failed_attempt(replay: str) -> None:
    res = await run_workflow_for_test(
        retry_wf, {"max": 4, "backoff": "exponential", "fails": 3}, replay=replay
    )
    assert res.status == RunStatus.COMPLETED and res.output == 4
    attempts = res.steps["f"]["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert [a["status"] for a in attempts] == ["err", "err", "err", "ok"]
    assert calls["f"] == 4


async def test_backoff_is_a_durable_datetime_waitpoint_with_capped_delays() -> None:
    res = await run_workflow_for_test(retry_wf, {"max": 4, "backoff": "exponential", "fails": 3})
    failed = [e for e in res.journal if isinstance(e, StepAttempt) and e.status == "err"]
    delays = [e.retry_at - e.finished_at for e in failed]
    assert delays == [1.0, 2.0, 3.0]  # 1, 2, 4 capped at max_delay=3
    regs = [e for e in res.journal if isinstance(e, WaitpointRegistered)]
    assert [(r.wp_id, r.kind) for r in regs] == [
        ("retry:f:1", WaitpointKind.DATETIME),
        ("retry:f:2", WaitpointKind.DATETIME),
        ("retry:f:3", WaitpointKind.DATETIME),
    ]
    assert [r.due_at for r in regs] == [e.retry_at for e in failed]


async def test_max_counts_attempts_and_the_last_error_fails_the_run() -> None:
    res = await run_workflow_for_test(retry_wf, {"max": 3, "backoff": "fixed", "fails": 10})
    assert res.status == RunStatus.FAILED
    assert res.error["code"] == "RETRYABLE"
    assert res.error["message"] == "attempt 3 failed"
    assert calls["f"] == 3


@workflow(id="steps-fatal")
async def fatal_wf(input: dict, ctx) -> int:
    return await ctx.step("f", flaky, "f", 5, FatalError, retry=RetryPolicy(max=5))


async def test_fatal_error_is_never_retried() -> None:
    res = await run_workflow_for_test(fatal_wf, {})
    assert res.status == RunStatus.FAILED
    assert res.error["code"] == "FATAL"
    assert calls["f"] == 1


def test_delay_rules() -> None:
    exp = RetryPolicy(max=10, backoff="exponential", initial="1s", max_delay="60s")
    lin = RetryPolicy(max=10, backoff="linear", initial="2s")
    fix = RetryPolicy(max=10, backoff="fixed", initial="5s")
    assert [exp.delay_after(n) for n in (1, 2, 3, 7, 8)] == [1, 2, 4, 60, 60]
    assert [lin.delay_after(n) for n in (1, 2, 3)] == [2, 4, 6]
    assert [fix.delay_after(n) for n in (1, 2, 3)] == [5, 5, 5]
    assert next_delay(exp, 1, RetryableError("x", retry_after="90s")) == 90
    assert next_delay(exp, 10, ValueError("x")) is None
    assert next_delay(exp, 1, FatalError("x")) is None
    with pytest.raises(ValueError, match="max"):
        RetryPolicy(max=0)


@workflow(id="steps-retry-after")
async def retry_after_wf(input: dict, ctx) -> int:
    def fn() -> int:
        if _count("ra") == 1:
            raise RetryableError("busy", retry_after="10m")
        return 1

    return await ctx.step("f", fn, retry=RetryPolicy(max=2, initial="1s"))


async def test_retry_after_overrides_the_policy_delay() -> None:
    res = await run_workflow_for_test(retry_after_wf, {})
    failed = next(e for e in res.journal if isinstance(e, StepAttempt) and e.status == "err")
    assert failed.retry_at - failed.finished_at == 600


@workflow(id="steps-wf-retry", retry=RetryPolicy(max=2, initial="1s"))
async def wf_default_retry(input: dict, ctx) -> list:
    first = await ctx.step("a", flaky, "a", 1, ValueError)
    ctx.set_retry(RetryPolicy(max=3, initial="1s"))
    second = await ctx.step("b", flaky, "b", 2, ValueError)
    return [first, second]


async def test_workflow_retry_is_the_default_and_set_retry_changes_it_for_later_steps() -> None:
    res = await run_workflow_for_test(wf_default_retry, {})
    assert res.output == [2, 3]


@workflow(id="steps-timeout")
async def timeout_wf(input: dict, ctx) -> dict:
    async def slow_async() -> int:
        await asyncio.sleep(30)
        return 1

    def slow_sync() -> int:
        time.sleep(0.3)
        _count("sync-finished")
        return 2

    out = {}
    for name, fn in (("async", slow_async), ("sync", slow_sync)):
        try:
            out[name] = await ctx.step(name, fn, timeout="50ms")
        except StepTimeoutError as exc:
            out[name] = exc.code
    return out


async def test_step_timeout_cancels_async_and_discards_late_sync_result() -> None:
    res = await run_workflow_for_test(timeout_wf, {})
    assert res.output == {"async": "TIMEOUT", "sync": "TIMEOUT"}
    assert res.steps["sync"]["error"]["name"] == "StepTimeoutError"
    await asyncio.sleep(0.4)
    assert calls.get("sync-finished") == 1  # the thread ran on, its result went nowhere
    assert res.steps["sync"]["output"] is None


@workflow(id="steps-replayed-error")
async def replayed_error_wf(input: dict, ctx) -> dict:
    caught = {}
    try:
        await ctx.step("bad", flaky, "bad", 9, KeyError)
    except KeyError as exc:
        caught["key"] = type(exc).__name__
    try:
        await ctx.step("fatal", flaky, "fatal", 9, FatalError)
    except FatalError as exc:
        caught["fatal"] = exc.code
    await ctx.sleep("1s")
    return caught


async def test_recorded_failure_reraises_as_same_type_and_code_on_replay(replay: str) -> None:
    res = await run_workflow_for_test(replayed_error_wf, {}, replay=replay)
    assert res.output == {"key": "KeyError", "fatal": "FATAL"}
    assert res.steps["bad"]["error"]["code"] == "UNKNOWN"
    assert res.steps["bad"]["error"]["name"] == "KeyError"
