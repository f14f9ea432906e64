"""``runtime.testing.explore`` (SPEC §14): every example workflow survives its seeds (injected
failures, permuted arrival, skewed timers, crashes at journal boundaries replayed), and a planted
non-determinism fails naming the seed that reproduces it exactly."""

from __future__ import annotations

import random
from typing import Any

import pytest

import examples.workflows as ex
from runtime import Context, RetryPolicy, workflow
from runtime.explore import _compensation_problem
from runtime.journal import (
    CompensationRan,
    StepAttempt,
    WaitpointRegistered,
    WaitpointResolved,
)
from runtime.testing import ExploreFailure, explore
from runtime.workflow import REGISTRY

SEEDS = 25


# One entry per example workflow: (function, input, supplies). Every example must be here.
EXAMPLES: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "greeting": (ex.greeting, {"name": " ada ", "pause": "2s"}, {}),
    "order-saga": (ex.order_saga, {"id": 1, "amount": 5}, {}),
    "order-saga/compensated": (ex.order_saga, {"id": 2, "fail_shipping": True}, {}),
    "approval": (ex.approval, {"timeout": "1h"},
                 {"tokens": {"*": {"approved": True, "by": "ada"}}}),
    "approval/timed-out": (ex.approval, {"timeout": "1h"}, {}),
    "score-item": (ex.score_item, {"item": "a"}, {}),
    "fan-out": (ex.fan_out, {"items": ["a", "bb", "c"], "concurrency": 2},
                {"invokes": {"score-item": lambda i: {"item": i["item"],
                                                      "score": len(i["item"])}}}),
    "payment-watch": (ex.payment_watch, {"order_id": 7, "timeout": "1d"},
                      {"events": {"payment.received": [{"order_id": 8, "amount": 1},
                                                       {"order_id": 7, "amount": 30}]}}),
    "payment-watch/timed-out": (ex.payment_watch, {"order_id": 7, "timeout": "1d"}, {}),
    "nightly-report": (ex.nightly_report, {"report": "orders"}, {}),
    "welcome": (ex.welcome, {"user_id": "u1", "follow_up_after": "3d"}, {}),
    "click-digest": (ex.click_digest, {"events": [{"page": "/", "user_id": 1},
                                                  {"page": "/", "user_id": 2}]}, {}),
}


def test_every_example_workflow_is_explored() -> None:
    ids = {case.split("/")[0] for case in EXAMPLES}
    assert ids == {d.id for d in _example_definitions()}


def _example_definitions() -> list[Any]:
    from runtime.workflow import definition_of

    return [definition_of(v) for v in vars(ex).values() if _is_workflow(v)]


def _is_workflow(value: Any) -> bool:
    from runtime.workflow import definition_of

    if not callable(value):
        return False
    try:
        definition_of(value)
    except (LookupError, TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("case", sorted(EXAMPLES))
async def test_example_workflow_survives_exploration(case: str) -> None:
    fn, input, supplies = EXAMPLES[case]
    report = await explore(fn, input, seeds=SEEDS, **supplies)
    assert report.seeds == tuple(range(SEEDS))
    ended = {str(r.status) for r in report.runs}
    expected = {"order-saga/compensated": {"compensated"}}.get(case, {"completed"})
    assert ended == expected, report.statuses()
    assert all(r.crashes and r.crashes[-1] == len(r.journal) for r in report.runs)


async def test_injected_failures_follow_the_retry_policy() -> None:
    calls: list[int] = []

    def work() -> str:
        calls.append(1)
        return "done"

    @workflow(id="explore.retried")
    async def retried(input: Any, ctx: Context) -> str:
        once = await ctx.step("once", lambda: "x")  # max=1: never injected
        out: str = await ctx.step("work", work, retry=RetryPolicy(max=3, initial="1s"))
        return once + out

    try:
        report = await explore(retried, None, seeds=30, failure_rate=0.5)
    finally:
        REGISTRY.unregister("explore.retried")
    injected = [i for r in report.runs for i in r.injected]
    assert injected and {step for step, _ in injected} == {"work"}
    assert all(attempt < 3 for _, attempt in injected)
    assert {r.output for r in report.runs} == {"xdone"}
    # Seeds differ in what they injected; the same seed injects the same again.
    again = await explore(retried, None, seeds=[3], failure_rate=0.5)
    assert again.runs[0].injected == report.runs[3].injected
    assert again.runs[0].journal == report.runs[3].journal


async def test_seeds_permute_arrivals_and_skew_timers_within_max_skew() -> None:
    @workflow(id="explore.arrivals")
    async def arrivals(input: Any, ctx: Context) -> list[Any]:
        first = await ctx.wait_for_event("pick")
        second = await ctx.wait_for_event("pick")
        poke = [await ctx.wait_for_signal("poke"), await ctx.wait_for_signal("poke")]
        await ctx.sleep(60)
        return [first["n"], second["n"], *poke]

    def lateness(run: Any) -> float:
        (reg,) = [e for e in run.journal
                  if isinstance(e, WaitpointRegistered) and e.wp_id.startswith("sleep:")]
        (res,) = [e for e in run.journal
                  if isinstance(e, WaitpointResolved) and e.wp_id == reg.wp_id]
        assert reg.due_at is not None
        return float(res.resolved_at - reg.due_at)

    supplies: dict[str, Any] = {"events": {"pick": [{"n": 1}, {"n": 2}]},
                                "signals": {"poke": ["a", "b"]}}
    try:
        report = await explore(arrivals, None, seeds=20, max_skew=5.0, **supplies)
        outputs = {tuple(r.output) for r in report.runs}
        # Both arrival orders of each type/name are tried across the seeds ...
        assert {o[:2] for o in outputs} == {(1, 2), (2, 1)}
        assert {o[2:] for o in outputs} == {("a", "b"), ("b", "a")}
        # ... and the sleep fires late, by up to max_skew, by a different amount per seed.
        late = [lateness(r) for r in report.runs]
        assert all(0.0 <= s <= 5.0 for s in late) and len({round(s, 6) for s in late}) > 10
        on_time = await explore(arrivals, None, seeds=5, max_skew=0.0, **supplies)
        assert [lateness(r) for r in on_time.runs] == [0.0] * 5
        # The same seed makes the same choices again.
        again = await explore(arrivals, None, seeds=[7], max_skew=5.0, **supplies)
        assert again.runs[0].journal == report.runs[7].journal
    finally:
        REGISTRY.unregister("explore.arrivals")


async def test_a_body_drawing_from_global_random_fails_naming_a_seed_that_reproduces_it() -> None:
    @workflow(id="explore.planted")
    async def planted(input: Any, ctx: Context) -> str:
        await ctx.step("first", lambda: 1)
        await ctx.sleep("1s")
        # The bug: a branch on a value that is not recorded (replay may take the other one).
        if random.random() < 0.5:
            return str(await ctx.step("heads", lambda: "heads"))
        return str(await ctx.step("tails", lambda: "tails"))

    try:
        with pytest.raises(ExploreFailure) as found:
            await explore(planted, None, seeds=20)
        failure = found.value
        assert f"seed {failure.seed}:" in str(failure)
        assert f"seeds=[{failure.seed}]" in str(failure)
        assert "crash after entry" in failure.problem
        with pytest.raises(ExploreFailure) as again:
            await explore(planted, None, seeds=[failure.seed])
        assert str(again.value) == str(failure)  # exactly the same run, crash and difference
    finally:
        REGISTRY.unregister("explore.planted")


def test_a_compensation_run_twice_or_out_of_order_is_reported() -> None:
    def ok(step: str) -> StepAttempt:
        return StepAttempt(step, 0, 1, "ok", None, None, 0.0, 0.0)

    def comp(step: str) -> CompensationRan:
        return CompensationRan(step, "ok", None, 0.0)

    assert _compensation_problem([ok("a"), ok("b"), comp("b"), comp("a")]) is None
    assert "more than once" in str(_compensation_problem([ok("a"), comp("a"), comp("a")]))
    assert "not in reverse" in str(_compensation_problem(
        [ok("a"), ok("b"), comp("a"), comp("b")]))


async def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        await explore(ex.greeting, {}, seeds=1, failure_rate=2.0)
