from __future__ import annotations

import asyncio

import pytest

from runtime import FatalError, workflow
from runtime.journal import MetadataOp, StepAttempt, StreamChunk
from runtime.status import RunStatus
from runtime.testing import run_workflow_for_test

log: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    log.clear()


@workflow(id="comp-parallel")
async def parallel_wf(input: dict, ctx) -> list:
    running = {"now": 0, "max": 0}

    async def work(item: int, index: int) -> int:
        async def body() -> int:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
            await asyncio.sleep(0.01 * (5 - item))  # later items finish first
            running["now"] -= 1
            return item * 10

        return await ctx.step(f"item-{index}", body)

    out = await ctx.parallel([1, 2, 3, 4, 5], work, concurrency=2)
    return [out, running["max"]]


async def test_parallel_keeps_input_order_and_respects_concurrency() -> None:
    res = await run_workflow_for_test(parallel_wf, {})
    assert res.output == [[10, 20, 30, 40, 50], 2]


@workflow(id="comp-settle")
async def settle_wf(input: dict, ctx) -> str:
    async def work(item: int, index: int) -> int:
        if item % 2:
            raise ValueError(f"odd {item}")
        return item

    try:
        await ctx.parallel([0, 1, 2, 3], work, settle=True)
    except ExceptionGroup as group:
        return f"{group.message} | {[str(e) for e in group.exceptions]}"
    return "no error"


async def test_settle_runs_all_and_names_failed_indices() -> None:
    res = await run_workflow_for_test(settle_wf, {})
    assert res.output == "parallel: items 1, 3 failed | ['odd 1', 'odd 3']"


@workflow(id="comp-gather")
async def gather_wf(input: dict, ctx) -> list:
    async def delayed(name: str, delay: float) -> str:
        await asyncio.sleep(delay)
        log.append(name)
        return name

    delays = input["delays"]
    first = await asyncio.gather(*(ctx.step(f"g{i}", delayed, f"g{i}", d)
                                   for i, d in enumerate(delays)))
    await ctx.sleep("1s")
    return first


def _steps(res) -> dict:
    return {e.step_id: (e.position, e.output) for e in res.journal if isinstance(e, StepAttempt)}


async def test_gather_of_steps_gives_the_same_journal_whatever_the_completion_order() -> None:
    fast_last = await run_workflow_for_test(gather_wf, {"delays": [0.03, 0.02, 0.01]})
    order_a = list(log)
    log.clear()
    fast_first = await run_workflow_for_test(gather_wf, {"delays": [0.01, 0.02, 0.03]})
    assert order_a == ["g2", "g1", "g0"] and log == ["g0", "g1", "g2"]
    assert _steps(fast_last) == _steps(fast_first) == {
        "g0": (0, "g0"), "g1": (1, "g1"), "g2": (2, "g2")}
    replayed = await run_workflow_for_test(gather_wf, {"delays": [0.03, 0.02, 0.01]},
                                           replay="cold")
    assert replayed.output == ["g0", "g1", "g2"] and replayed.divergence == ()


@workflow(id="comp-stream")
async def stream_wf(input: dict, ctx) -> dict:
    async def words():
        for w in ["he", "llo"]:
            log.append(w)
            yield w

    async def blobs():
        yield b"\x00\x01"
        yield b"\xff"

    async def objects():
        yield {"a": 1}
        yield [1, 2]

    text = await ctx.stream.text("t", words)
    raw = await ctx.stream.bytes("b", blobs())
    objs = await ctx.stream.json("j", objects())
    await ctx.sleep("1s")
    return {"text": text, "bytes": list(raw), "objs": objs}


async def test_streams_record_chunks_and_are_not_iterated_again_on_replay(replay: str) -> None:
    res = await run_workflow_for_test(stream_wf, {}, replay=replay)
    assert res.output == {"text": "hello", "bytes": [0, 1, 255], "objs": [{"a": 1}, [1, 2]]}
    assert log == ["he", "llo"]  # the cold replay did not drain the source again
    assert res.streams == {"t": ["he", "llo"], "b": ["AAE=", "/w=="], "j": [{"a": 1}, [1, 2]]}
    chunks = [e for e in res.journal if isinstance(e, StreamChunk) and e.stream_id == "t"]
    assert [(c.seq, c.encoding, c.final) for c in chunks] == [
        (0, "text", False), (1, "text", False), (2, "text", True)]


async def test_duplicate_stream_id_is_an_error() -> None:
    @workflow(id="comp-stream-dup")
    async def wf(input: dict, ctx) -> None:
        async def one():
            yield "x"

        await ctx.stream.text("s", one)
        await ctx.stream.text("s", one)

    res = await run_workflow_for_test(wf, {})
    assert res.error["code"] == "DUPLICATE_STREAM_ID"


def undo(name: str):
    def fn(output: object) -> None:
        log.append(f"undo {name} {output}")
    return fn


def failing_undo(output: object) -> None:
    raise RuntimeError("cannot undo")


@workflow(id="comp-saga")
async def saga_wf(input: dict, ctx) -> str:
    await ctx.step("reserve", lambda: "r1", compensate=undo("reserve"))
    await ctx.step("charge", lambda: "c1",
                   compensate=failing_undo if input.get("bad_undo") else undo("charge"))
    await ctx.sleep("1s")
    if input.get("explicit"):
        await ctx.compensate()
    await ctx.step("ship", lambda: (_ for _ in ()).throw(FatalError("no truck", code="NO_TRUCK")))
    return "shipped"


async def test_failure_runs_compensations_lifo_and_keeps_the_original_error(replay: str) -> None:
    res = await run_workflow_for_test(saga_wf, {}, replay=replay)
    assert res.status == RunStatus.COMPENSATED
    assert res.error["code"] == "NO_TRUCK"
    assert log == ["undo charge c1", "undo reserve r1"]
    assert [c["step_id"] for c in res.compensations] == ["charge", "reserve"]


async def test_failing_compensation_gives_compensation_failed_and_runs_the_rest() -> None:
    res = await run_workflow_for_test(saga_wf, {"bad_undo": True})
    assert res.status == RunStatus.COMPENSATION_FAILED
    assert log == ["undo reserve r1"]
    assert [c["status"] for c in res.compensations] == ["err", "ok"]


async def test_explicit_compensate_ends_the_run_compensated() -> None:
    res = await run_workflow_for_test(saga_wf, {"explicit": True})
    assert res.status == RunStatus.COMPENSATED and res.error is None
    assert "ship" not in res.steps


@workflow(id="comp-group")
async def group_wf(input: dict, ctx) -> str:
    await ctx.step("outer", lambda: "o", compensate=undo("outer"))
    try:
        async with ctx.group("inner") as g:
            await g.step("a", lambda: "a", compensate=undo("a"))
            await g.step("b", lambda: "b", compensate=undo("b"))
            raise ValueError("inner failed")
    except ValueError:
        pass
    async with ctx.group("manual") as g:
        await g.step("c", lambda: "c", compensate=undo("c"))
        await g.compensate()
    return "done"


async def test_group_compensates_only_its_own_steps_in_reverse(replay: str) -> None:
    res = await run_workflow_for_test(group_wf, {}, replay=replay)
    assert res.status == RunStatus.COMPLETED
    assert log == ["undo b b", "undo a a", "undo c c"]


@workflow(id="comp-metadata")
async def metadata_wf(input: dict, ctx) -> dict:
    ctx.metadata.set("stage", "start")
    ctx.metadata.increment("count")
    await ctx.step("a", lambda: 1)
    await ctx.sleep("1s")
    ctx.metadata.increment("count", 2)
    ctx.metadata.append("events", "x")
    ctx.metadata.set("tmp", 1)
    ctx.metadata.remove("tmp")
    ctx.metadata.parent.set("child_done", True)
    await ctx.metadata.root.increment("children")
    await ctx.sleep("1s")
    return {"count": ctx.metadata.get("count")}


async def test_metadata_ops_are_recorded_exactly_once_across_replays(replay: str) -> None:
    res = await run_workflow_for_test(metadata_wf, {}, replay=replay)
    assert res.metadata == {"stage": "start", "count": 3, "events": ["x"]}
    assert res.output == {"count": 3}
    ops = [e for e in res.journal if isinstance(e, MetadataOp)]
    assert [o.index for o in ops] == list(range(8))
    assert [(o.target, o.key) for o in ops[-2:]] == [("parent", "child_done"),
                                                      ("root", "children")]
