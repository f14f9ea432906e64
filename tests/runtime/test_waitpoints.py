from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runtime import ChildRunError, FatalError, StepTimeoutError, workflow
from runtime.journal import WaitpointRegistered, WaitpointResolved
from runtime.status import ResolutionSource, RunStatus, WaitpointKind
from runtime.testing import UnresolvedWaitError, resume_workflow_for_test, run_workflow_for_test

T0 = 1_700_000_000.0


def registrations(res) -> list[WaitpointRegistered]:
    return [e for e in res.journal if isinstance(e, WaitpointRegistered)]


@workflow(id="wp-ids")
async def ids_wf(input: dict, ctx) -> list:
    await ctx.sleep("1s")
    await ctx.sleep(timedelta(seconds=2))
    a = await ctx.wait_for_event("order.paid")
    b = await ctx.wait_for_event("order.paid")
    c = await ctx.wait_for_signal("approve")
    tok = await ctx.wait_for_token()
    d = await tok.wait()
    e = await ctx.invoke("wp-child", {"n": 1})
    return [a, b, c, d, e, tok.id]


@workflow(id="wp-child")
async def child_wf(input: dict, ctx) -> dict:
    return {"doubled": await ctx.step("double", lambda: input["n"] * 2)}


async def test_client_waitpoint_ids_follow_the_seed_scheme(replay: str) -> None:
    res = await run_workflow_for_test(
        ids_wf, {}, run_id="run-1", replay=replay,
        events={"order.paid": [1, 2]}, signals={"approve": "yes"}, tokens={"*": "tok-payload"},
    )
    assert res.status == RunStatus.COMPLETED, res.error
    token_id = res.output[5]
    assert [r.wp_id for r in registrations(res)] == [
        "sleep:0", "sleep:1", "event:order.paid:0", "event:order.paid:1", "signal:approve:0",
        f"token:{token_id}", "invoke:wp-child:0",
    ]
    assert res.output[:5] == [1, 2, "yes", "tok-payload", {"doubled": 2}]
    assert res.invocations == [{"workflow_id": "wp-child", "child_run_id": "run-1-wp-child-0",
                                "input": {"n": 1}, "detach": False, "output": {"doubled": 2}}]


async def test_token_id_is_stable_across_replays_and_unique_per_run() -> None:
    kw = {"events": {"order.paid": [1, 2]}, "signals": {"approve": 1}, "tokens": {"*": 1}}
    warm = await run_workflow_for_test(ids_wf, {}, run_id="run-1", **kw)
    cold = await run_workflow_for_test(ids_wf, {}, run_id="run-1", replay="cold", **kw)
    other = await run_workflow_for_test(ids_wf, {}, run_id="run-2", **kw)
    assert warm.output[5] == cold.output[5] != other.output[5]
    assert warm.output[5].startswith("tok_")


@workflow(id="wp-sleep")
async def sleep_wf(input: dict, ctx) -> list:
    t0 = ctx.now()
    await ctx.sleep("24h")
    t1 = ctx.now()
    await ctx.sleep_until(datetime(2030, 1, 1, tzinfo=UTC))
    return [t0.isoformat(), t1.isoformat(), ctx.now().isoformat()]


async def test_sleep_due_time_is_absolute_from_first_registration(replay: str) -> None:
    res = await run_workflow_for_test(sleep_wf, {}, now=T0, replay=replay)
    regs = registrations(res)
    assert regs[0].due_at == T0 + 86400 and regs[0].kind == WaitpointKind.DATETIME
    assert regs[1].due_at == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert res.output == [
        datetime.fromtimestamp(T0, UTC).isoformat(),
        datetime.fromtimestamp(T0 + 86400, UTC).isoformat(),
        "2030-01-01T00:00:00+00:00",
    ]


async def test_sleep_until_needs_an_aware_datetime() -> None:
    @workflow(id="wp-naive")
    async def naive(input: dict, ctx) -> None:
        await ctx.sleep_until(datetime(2030, 1, 1))

    res = await run_workflow_for_test(naive, {})
    assert res.status == RunStatus.FAILED and "timezone-aware" in res.error["message"]


@workflow(id="wp-event-opts")
async def event_opts_wf(input: dict, ctx) -> list:
    matched = await ctx.wait_for_event("pay", match={"order": {"id": 7}}, lookback="5m")
    timed_out = await ctx.wait_for_event("never", timeout="10s")
    try:
        await ctx.wait_for_event("never", timeout="1m", on_timeout="raise")
    except StepTimeoutError as exc:
        raised = exc.code
    return [matched, timed_out, raised, ctx.now().timestamp() - ctx.run.started_at.timestamp()]


async def test_event_match_timeout_and_lookback(replay: str) -> None:
    res = await run_workflow_for_test(
        event_opts_wf, {}, now=T0, replay=replay,
        events={"pay": [{"order": {"id": 6}}, {"order": {"id": 7, "total": 3}}]},
    )
    assert res.output == [{"order": {"id": 7, "total": 3}}, None, "TIMEOUT", 70.0]
    regs = registrations(res)
    assert regs[0].meta == {"event_type": "pay", "buffer_size": 100,
                            "match": {"order": {"id": 7}}, "lookback_from": T0 - 300}
    assert regs[1].timeout_at == T0 + 10
    timeouts = [e for e in res.journal
                if isinstance(e, WaitpointResolved) and e.source == ResolutionSource.TIMEOUT]
    assert [t.wp_id for t in timeouts] == ["event:never:0", "event:never:1"]


async def test_callable_match_fails_clearly() -> None:
    @workflow(id="wp-callable-match")
    async def wf(input: dict, ctx) -> None:
        await ctx.wait_for_event("x", match=lambda p: True)

    res = await run_workflow_for_test(wf, {})
    assert res.status == RunStatus.FAILED and "cannot be persisted" in res.error["message"]


@workflow(id="wp-iterate")
async def iterate_wf(input: dict, ctx) -> list:
    seen = []
    async for payload in ctx.wait_for_event("tick", match={"ok": True}, timeout="1m"):
        seen.append(payload["n"])
        await ctx.step(f"handle-{payload['n']}", lambda: None)
        if len(seen) == 3:
            break
    return seen


async def test_async_for_gets_every_matching_event_each_its_own_waitpoint(replay: str) -> None:
    ticks = [{"n": 1, "ok": True}, {"n": 2, "ok": False}, {"n": 3, "ok": True},
             {"n": 4, "ok": True}]
    res = await run_workflow_for_test(iterate_wf, {}, events={"tick": ticks}, replay=replay)
    assert res.output == [1, 3, 4]
    regs = registrations(res)
    assert [r.wp_id for r in regs] == ["event:tick:iter:0", "event:tick:iter:1",
                                        "event:tick:iter:2"]
    assert all(r.meta["iterator"] == "event:tick:0" for r in regs)
    assert [r.meta["seq"] for r in regs] == [0, 1, 2]


async def test_async_for_ends_when_an_iteration_times_out() -> None:
    res = await run_workflow_for_test(iterate_wf, {}, events={"tick": [{"n": 1, "ok": True}]})
    assert res.output == [1]


@workflow(id="wp-signals")
async def signals_wf(input: dict, ctx) -> list:
    first = await ctx.wait_for_signal("note")
    second = await ctx.wait_for_signal("note")
    return [first, second]


async def test_signals_are_consumed_oldest_first(replay: str) -> None:
    res = await run_workflow_for_test(signals_wf, {}, signals={"note": ["a", "b"]}, replay=replay)
    assert res.output == ["a", "b"]


@workflow(id="wp-token-timeout")
async def token_timeout_wf(input: dict, ctx) -> list:
    tok = await ctx.wait_for_token("fixed-id", timeout="1h")
    return [tok.id, await tok.wait()]


async def test_token_with_timeout_resolves_none_when_nobody_completes_it() -> None:
    res = await run_workflow_for_test(token_timeout_wf, {})
    assert res.output == ["fixed-id", None]
    res = await run_workflow_for_test(token_timeout_wf, {}, tokens={"fixed-id": {"ok": 1}})
    assert res.output == ["fixed-id", {"ok": 1}]


@workflow(id="wp-invoke")
async def invoke_wf(input: dict, ctx) -> dict:
    detached = await ctx.invoke(child_wf, {"n": 5}, detach=True)
    try:
        await ctx.invoke("wp-failing-child", {})
    except ChildRunError as exc:
        failure = {"code": exc.code, "type": type(exc).__name__}
    ok = await ctx.invoke("wp-stubbed", {"q": 1})
    return {"detached": detached, "failure": failure, "ok": ok}


@workflow(id="wp-failing-child")
async def failing_child(input: dict, ctx) -> None:
    raise FatalError("nope", code="OUT_OF_STOCK")


async def test_invoke_await_detach_and_child_error(replay: str) -> None:
    res = await run_workflow_for_test(
        invoke_wf, {}, run_id="p", replay=replay,
        invokes={"wp-stubbed": lambda child_input: {"echo": child_input}},
    )
    assert res.output == {"detached": None,
                          "failure": {"code": "OUT_OF_STOCK", "type": "ChildRunError"},
                          "ok": {"echo": {"q": 1}}}
    assert [(i["workflow_id"], i["detach"]) for i in res.invocations] == [
        ("wp-child", True), ("wp-failing-child", False), ("wp-stubbed", False)]
    assert res.invocations[0]["child_run_id"] == "p-wp-child-0"


async def test_pause_on_wait_then_resume_with_the_event() -> None:
    res = await run_workflow_for_test(signals_wf, {}, pause_on_wait=True)
    assert res.status == RunStatus.WAITING
    assert res.pause == {"waiting_on": [{"id": "signal:note:0", "kind": "SIGNAL"}]}
    res = await resume_workflow_for_test(res, signals={"note": ["x"]}, pause_on_wait=True)
    assert res.status == RunStatus.WAITING
    res = await resume_workflow_for_test(res, signals={"note": "y"})
    assert res.status == RunStatus.COMPLETED and res.output == ["x", "y"]
    with pytest.raises(ValueError, match="nothing to resume"):
        await resume_workflow_for_test(res)


async def test_unsupplied_wait_without_pause_names_the_waitpoint() -> None:
    with pytest.raises(UnresolvedWaitError, match="signal:note:0"):
        await run_workflow_for_test(signals_wf, {})
