"""Traces (SPEC §12, issue 19): the spans of a run tree, exported to an in-memory exporter from a
real engine on a real SQLite file, checked as a tree; ids stable across a second export; the
step body runs with its attempt's span current; ``traceparent`` at submit is validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import storage
from orchestrator.api import errors
from orchestrator.client.client import current_traceparent
from orchestrator.engine import spans
from orchestrator.engine.otel import OtelTracing
from orchestrator.engine.settings import Settings
from runtime import Context, RetryPolicy
from runtime.steps import current_step
from runtime.workflow import Registry, WorkflowDefinition
from tests.orchestrator.conftest import GRACE, open_engine, until

CALLER_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN = 0xB7AD6B7169203331
TRACEPARENT = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"

SEEN: dict[str, tuple[int, int]] = {}  # "<run>:<step>:<attempt>" -> (trace id, span id) in the body


def _current() -> None:
    step = current_step()
    ctx = trace.get_current_span().get_span_context()
    SEEN[f"{step.run_id}:{step.step_id}:{step.attempt}"] = (ctx.trace_id, ctx.span_id)


async def flaky() -> str:
    _current()
    if current_step().attempt == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


def in_thread() -> int:
    _current()  # a sync step runs on the step pool: the context goes along
    return 1


async def parent(input: dict[str, Any], ctx: Context) -> str:
    await ctx.step("flaky", flaky, retry=RetryPolicy(max=2, initial="10ms"))
    await ctx.step("thread", in_thread)
    await ctx.sleep("10ms")
    return str(await ctx.invoke("trace-child", {}))


async def child(input: dict[str, Any], ctx: Context) -> str:
    await ctx.step("work", in_thread)
    return "child done"


async def waiter(input: dict[str, Any], ctx: Context) -> str:
    await ctx.step("a", in_thread)
    await ctx.wait_for_event("trace.one")
    await ctx.step("b", in_thread)
    await ctx.wait_for_event("trace.two")
    await ctx.step("c", in_thread)
    return "done"


def registry() -> Registry:
    reg = Registry()
    for wid, fn in (("trace-parent", parent), ("trace-child", child), ("trace-waiter", waiter)):
        reg.register(WorkflowDefinition(id=wid, fn=fn, version="1", origin=f"{__name__}.{wid}"))
    return reg


def by_name(exported: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in exported:
        out.setdefault(s.name, []).append(s)
    return out


async def test_a_run_tree_is_one_trace_built_from_the_journal(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with open_engine(tmp_path / "wf.db", Settings(shutdown_grace=GRACE),
                           registry()) as engine:
        tracing = OtelTracing(engine.storage, [exporter], batch=False)
        engine.supervisor.tracing = tracing
        run = await engine.submit("trace-parent", {}, traceparent=TRACEPARENT)
        rid = run["run_id"]
        done = await engine.wait(rid, timeout=10)
        assert done["status"] == "completed", done
        await until(lambda: len(by_name(list(exporter.get_finished_spans()))
                                .get("workflow trace-parent", [])) == 1, "the parent's spans")
        await tracing.close()
        journal = await engine.storage.load_journal(rid)

    exported = list(exporter.get_finished_spans())
    names = by_name(exported)
    cid = f"{rid}-trace-child-0"
    assert {s.context.trace_id for s in exported} == {CALLER_TRACE}  # one trace, the caller's
    root = names["workflow trace-parent"][0]
    assert root.parent is not None and root.parent.span_id == CALLER_SPAN
    assert root.attributes is not None and root.attributes["wf.run_id"] == rid
    assert root.attributes["wf.status"] == "completed"
    # One span per attempt under the run; the failed attempt is an ERROR span.
    attempts = sorted(names["step flaky"], key=lambda s: s.attributes["wf.attempt"])  # type: ignore[index]
    assert [s.attributes["wf.attempt"] for s in attempts] == [1, 2]  # type: ignore[index]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[1].status.status_code is StatusCode.UNSET
    for s in [*attempts, *names["step thread"], *names["wait sleep"], *names["wait backoff"],
              *names["wait child"]]:
        assert s.parent is not None and s.parent.span_id == root.context.span_id, s.name
    # Journal times: the attempt spans lie inside the run's.
    assert root.start_time is not None and root.end_time is not None
    for s in attempts:
        assert root.start_time <= s.start_time <= s.end_time <= root.end_time  # type: ignore[operator]
    # The child's run hangs under the parent's wait span for it; its step under its run.
    wait_child = names["wait child"][0]
    child_run = names["workflow trace-child"][0]
    assert child_run.parent is not None and child_run.parent.span_id == wait_child.context.span_id
    assert child_run.attributes is not None and child_run.attributes["wf.parent_run_id"] == rid
    work = names["step work"][0]
    assert work.parent is not None and work.parent.span_id == child_run.context.span_id
    # The step bodies ran with their attempt's span current (async, thread, child run).
    for key, span in ((f"{rid}:flaky:1", attempts[0]), (f"{rid}:flaky:2", attempts[1]),
                      (f"{rid}:thread:1", names["step thread"][0]), (f"{cid}:work:1", work)):
        assert SEEN[key] == (CALLER_TRACE, span.context.span_id), key
    # A second export (a crash before the batch left, a recovery) repeats the same ids.
    again = InMemorySpanExporter()
    OtelTracing(engine.storage, [again], batch=False).export(journal)
    parent_ids = {s.context.span_id for s in exported if s.attributes
                  and s.attributes["wf.run_id"] == rid}
    assert {s.context.span_id for s in again.get_finished_spans()} == parent_ids


async def test_without_traceparent_the_trace_id_comes_from_the_run_id(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with open_engine(tmp_path / "wf.db", Settings(shutdown_grace=GRACE),
                           registry()) as engine:
        tracing = OtelTracing(engine.storage, [exporter], batch=False)
        engine.supervisor.tracing = tracing
        run = await engine.submit("trace-child", {}, run_id="no-parent")
        await engine.wait(run["run_id"], timeout=10)
        await tracing.close()
    root = by_name(list(exporter.get_finished_spans()))["workflow trace-child"][0]
    assert root.parent is None
    assert root.context.trace_id == spans.trace_id_for("no-parent")


@pytest.mark.parametrize("bad", ["nope", "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
                                 "01-" + "a" * 32 + "-" + "b" * 16 + "-01", "x" * 2000])
async def test_a_malformed_traceparent_is_refused_by_name(tmp_path: Path, bad: str) -> None:
    async with open_engine(tmp_path / "wf.db", Settings(shutdown_grace=GRACE),
                           registry()) as engine:
        with pytest.raises(errors.InvalidParams, match="traceparent"):
            await engine.submit("trace-child", {}, traceparent=bad)
        assert await engine.storage.list_runs(limit=None) == []


async def test_the_traceparent_is_stored_with_the_run(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "wf.db", Settings(shutdown_grace=GRACE),
                           registry()) as engine:
        run = await engine.submit("trace-child", {}, traceparent=TRACEPARENT)
        stored = await engine.storage.get_run(run["run_id"])
        assert stored is not None and stored.traceparent == TRACEPARENT


def test_the_client_sends_the_callers_current_span() -> None:
    assert current_traceparent() is None  # no current span
    ctx = trace.SpanContext(CALLER_TRACE, CALLER_SPAN, is_remote=False,
                            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    with trace.use_span(trace.NonRecordingSpan(ctx)):
        assert current_traceparent() == TRACEPARENT


def test_span_ids_are_a_function_of_run_and_entry() -> None:
    a = spans.span_id_for("run-1", "step:s:1")
    assert a == spans.span_id_for("run-1", "step:s:1")
    assert a != spans.span_id_for("run-1", "step:s:2") != spans.span_id_for("run-2", "step:s:1")
    assert 0 < a < 2**64 and 0 < spans.trace_id_for("run-1") < 2**128
    assert spans.parse_traceparent(TRACEPARENT) == spans.TraceContext(CALLER_TRACE, CALLER_SPAN)
    assert spans.parse_traceparent(TRACEPARENT).header() == TRACEPARENT  # type: ignore[union-attr]


def names_of(exporter: InMemorySpanExporter) -> list[str]:
    return sorted(s.name for s in exporter.get_finished_spans())


async def test_a_parked_run_shows_what_it_did_so_far_and_nothing_twice(tmp_path: Path) -> None:
    """A run parked for long is visible before it ends: its finished steps leave when it
    parks (the wait it parks on and the run's own span only once they end); a second park
    inside the window leaves at the window's end; the final export repeats none of them."""
    exporter = InMemorySpanExporter()
    async with open_engine(tmp_path / "wf.db", Settings(shutdown_grace=GRACE),
                           registry()) as engine:
        tracing = OtelTracing(engine.storage, [exporter], batch=False, progress_every=0.5)
        engine.supervisor.tracing = tracing
        rid = (await engine.submit("trace-waiter", {}, run_id="long"))["run_id"]
        await until(lambda: names_of(exporter) == ["step a"], "step a before the run ends")
        assert (await engine.storage.get_run(rid)).status is storage.RunStatus.WAITING  # type: ignore[union-attr]
        await engine.send_event("trace.one", {})
        await until(lambda: names_of(exporter) == ["step a", "step b", "wait event"],
                    "the second park's spans at the window's end")
        await engine.send_event("trace.two", {})
        assert (await engine.wait(rid, timeout=10))["status"] == "completed"
        await until(lambda: "workflow trace-waiter" in names_of(exporter), "the run's span")
        await tracing.close()
    assert names_of(exporter) == ["step a", "step b", "step c", "wait event", "wait event",
                                  "workflow trace-waiter"]
    assert len({s.context.span_id for s in exporter.get_finished_spans()}) == 6


async def test_a_run_that_never_started_still_exports_its_span(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with open_engine(tmp_path / "wf.db", Settings(shutdown_grace=GRACE),
                           registry()) as engine:
        tracing = OtelTracing(engine.storage, [exporter], batch=False)
        engine.supervisor.tracing = tracing
        rid = (await engine.submit("trace-child", {}, delay=3600))["run_id"]
        await engine.cancel(rid, reason="not needed")
        await until(lambda: names_of(exporter) == ["workflow trace-child"], "its span")
        await tracing.close()
    (root,) = exporter.get_finished_spans()
    assert root.attributes is not None and root.attributes["wf.status"] == "cancelled"
    assert root.status.status_code is StatusCode.ERROR


_ = storage  # the storage package is what the journal comes from (import kept for readers)
