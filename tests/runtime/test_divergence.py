"""Divergence detection (SPEC §3): a replay that leaves the recorded history holds the run
``paused`` with code ``NONDETERMINISM`` and runs nothing new; parallel branches that reach new
work before a sibling consumed its recorded entries are not a divergence."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from runtime import workflow
from runtime._state import waitpoint_mismatch
from runtime.clock import ManualClock
from runtime.executor import Execution
from runtime.facts import HostServices, Outcome, RunFacts
from runtime.journal import Entry, Journal, StepAttempt, WaitpointRegistered, WaitpointResolved
from runtime.status import ResolutionSource, RunStatus, WaitpointKind
from runtime.workflow import definition_of

T0 = 1_700_000_000.0
calls: list[str] = []


class Host:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.clock = ManualClock(T0 + 5000)

    async def record(self, entry: Entry) -> Sequence[WaitpointResolved]:
        await asyncio.sleep(0)
        self.entries.append(entry)
        return ()


async def replay(wf: Any, entries: Sequence[Entry]) -> tuple[Outcome, Host]:
    calls.clear()
    host = Host()
    definition = definition_of(wf)
    facts = RunFacts("run-d", definition.id, definition.version, T0)
    ex = Execution(definition, {}, facts, Journal(list(entries)),
                   HostServices(record=host.record, clock=host.clock))
    try:
        outcome = await ex.advance()
    finally:
        await ex.close()
    return outcome, host


def step(step_id: str, position: int, output: Any = None) -> StepAttempt:
    return StepAttempt(step_id, position, 1, "ok", output, None, T0, T0)


def sleep_entries(n: int, seconds: float, at: float = T0) -> list[Entry]:
    wp = f"sleep:{n}"
    return [
        WaitpointRegistered(wp, WaitpointKind.DATETIME, at, due_at=at + seconds),
        WaitpointResolved(wp, WaitpointKind.DATETIME, at + seconds, ResolutionSource.LIVE),
    ]


def called(name: str) -> Any:
    def fn() -> str:
        calls.append(name)
        return name
    return fn


def held(outcome: Outcome) -> dict[str, Any]:
    assert outcome.status == RunStatus.PAUSED, outcome
    assert outcome.error is not None and outcome.error["code"] == "NONDETERMINISM"
    detail: dict[str, Any] = outcome.error["data"]["divergence"]
    assert detail in outcome.divergence
    return detail


@workflow(id="div-inserted-step")
async def inserted_step(input: dict, ctx) -> list:
    return [await ctx.step("new", called("new")), await ctx.step("old", called("old"))]


async def test_a_new_step_before_a_recorded_one_is_held_and_never_run() -> None:
    outcome, host = await replay(inserted_step, [step("old", 0, "old")])
    detail = held(outcome)
    assert detail["kind"] == "inserted"
    assert detail["new"] == {"step_id": "new"}
    assert detail["unconsumed"] == {"step_ids": ["old"], "waitpoint_ids": []}
    assert calls == [] and host.entries == []


@workflow(id="div-inserted-sleep")
async def inserted_sleep(input: dict, ctx) -> str:
    await ctx.sleep(60)  # new: inserted before the recorded one-hour sleep
    await ctx.sleep(3600)
    return await ctx.step("after", called("after"))


async def test_a_sleep_inserted_before_an_old_one_does_not_take_its_resolution() -> None:
    outcome, host = await replay(inserted_sleep, sleep_entries(0, 3600))
    detail = held(outcome)
    assert detail == {"kind": "waitpoint", "wp_id": "sleep:0", "field": "due",
                      "recorded": 3600, "found": 60}
    assert calls == [] and host.entries == []


@workflow(id="div-same-sleep")
async def same_sleep(input: dict, ctx) -> str:
    await ctx.sleep(3600)
    return await ctx.step("after", called("after"))


async def test_the_same_sleep_replays_whatever_the_clock_says_now() -> None:
    outcome, _ = await replay(same_sleep, sleep_entries(0, 3600))
    assert outcome.status == RunStatus.COMPLETED and outcome.output == "after"
    assert outcome.divergence == ()


@workflow(id="div-event-match")
async def event_match(input: dict, ctx) -> Any:
    return await ctx.wait_for_event("order.paid", match={"order": 2})


async def test_an_event_wait_with_another_match_diverges() -> None:
    wp = "event:order.paid:0"
    entries: list[Entry] = [
        WaitpointRegistered(wp, WaitpointKind.EVENT, T0,
                            meta={"event_type": "order.paid", "buffer_size": 100,
                                  "match": {"order": 1}}),
        WaitpointResolved(wp, WaitpointKind.EVENT, T0 + 1, ResolutionSource.LIVE, {"x": 1}),
    ]
    outcome, _ = await replay(event_match, entries)
    detail = held(outcome)
    assert detail["kind"] == "waitpoint" and detail["field"] == "match"
    assert (detail["recorded"], detail["found"]) == ({"order": 1}, {"order": 2})


def _wp(kind: WaitpointKind, at: float = T0, due: float | None = None,
        **meta: Any) -> WaitpointRegistered:
    return WaitpointRegistered("wp:0", kind, at, due_at=due, meta=meta)


CHILD: dict[str, Any] = {"workflow_id": "score", "child_run_id": "r-score-0", "detach": False}


@pytest.mark.parametrize(("recorded", "now", "field"), [
    (_wp(WaitpointKind.DATETIME, due=T0 + 60), _wp(WaitpointKind.EVENT, event_type="x"),
     "kind"),
    (_wp(WaitpointKind.DATETIME, due=T0 + 60), _wp(WaitpointKind.DATETIME, T0 + 9, T0 + 70),
     "due"),
    (_wp(WaitpointKind.EVENT, event_type="paid"), _wp(WaitpointKind.EVENT, event_type="void"),
     "event_type"),
    (_wp(WaitpointKind.SIGNAL, signal="go"), _wp(WaitpointKind.SIGNAL, signal="stop"),
     "signal"),
    (_wp(WaitpointKind.MANUAL, token_id="t1"), _wp(WaitpointKind.MANUAL, token_id="t2"),
     "token_id"),
    (_wp(WaitpointKind.RUN, **CHILD), _wp(WaitpointKind.RUN, **{**CHILD, "workflow_id": "rank"}),
     "workflow_id"),
])
def test_a_waitpoint_id_reused_for_another_meaning_names_the_field(
    recorded: WaitpointRegistered, now: WaitpointRegistered, field: str
) -> None:
    found = waitpoint_mismatch(recorded, now)
    assert found is not None and found["field"] == field


def test_what_may_differ_between_a_recording_and_its_replay_is_no_mismatch() -> None:
    # The same instant or the same duration; what the clock and the child's data decide.
    sleep = _wp(WaitpointKind.DATETIME, due=T0 + 60)
    assert waitpoint_mismatch(sleep, _wp(WaitpointKind.DATETIME, T0 + 9, T0 + 60)) is None
    assert waitpoint_mismatch(sleep, _wp(WaitpointKind.DATETIME, T0 + 9, T0 + 69)) is None
    child = _wp(WaitpointKind.RUN, **CHILD, input={"n": 1}, tags=["a"], idempotency_key="k")
    again = _wp(WaitpointKind.RUN, **CHILD, input={"n": 2}, tags=["b"], idempotency_key="j")
    assert waitpoint_mismatch(child, again) is None
    event = _wp(WaitpointKind.EVENT, event_type="paid", lookback_from=T0)
    assert waitpoint_mismatch(event, _wp(WaitpointKind.EVENT, event_type="paid",
                                         lookback_from=T0 + 5)) is None


@workflow(id="div-ends-early")
async def ends_early(input: dict, ctx) -> str:
    return await ctx.step("a", called("a"))


async def test_a_body_that_ends_before_recorded_entries_is_held() -> None:
    outcome, _ = await replay(ends_early, [step("a", 0, "a"), *sleep_entries(0, 10),
                                           step("b", 1, "b")])
    detail = held(outcome)
    assert detail == {"kind": "unreached", "step_ids": ["b"], "waitpoint_ids": ["sleep:0"]}
    assert outcome.output is None


@workflow(id="div-fails-early")
async def fails_early(input: dict, ctx) -> str:
    await ctx.step("booked", called("booked"), compensate=lambda _: calls.append("undo"))
    raise RuntimeError("new validation")


async def test_a_body_that_fails_before_recorded_entries_does_not_compensate() -> None:
    outcome, _ = await replay(fails_early, [step("booked", 0, "b"), step("charged", 1, "c")])
    assert held(outcome)["kind"] == "unreached"
    assert calls == []  # the compensation would act on a history this code did not make


@workflow(id="div-parallel")
async def parallel(input: dict, ctx) -> list:
    async def left() -> list:
        return [await ctx.step("l1", called("l1")), await ctx.step("l2", called("l2"))]

    async def right() -> list:
        first = await ctx.step("r1", called("r1"))
        await asyncio.sleep(0)  # a few body turns before it consumes its second record
        await asyncio.sleep(0)
        return [first, await ctx.step("r2", called("r2")), await ctx.step("r3", called("r3"))]

    got = await asyncio.gather(left(), right())
    return [*got[0], *got[1]]


async def test_a_branch_reaching_new_work_before_its_sibling_consumed_is_no_divergence() -> None:
    recorded = [step("l1", 0, "l1"), step("r1", 1, "r1"), step("r2", 2, "r2")]
    outcome, _ = await replay(parallel, recorded)
    assert outcome.status == RunStatus.COMPLETED
    assert outcome.output == ["l1", "l2", "r1", "r2", "r3"]
    assert sorted(calls) == ["l2", "r3"]
