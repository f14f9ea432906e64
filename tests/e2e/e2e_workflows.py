"""Workflows the e2e daemon loads (``workflows.modules = ["e2e_workflows"]``).

Every id starts with ``e2e-``. Workflows that must be caught mid-flight coordinate with the test
through files whose paths come in the input (the daemon is another process): a step writes a
``started`` marker, and a stream source waits for a ``gate`` file before its last chunk.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

from runtime import ChildRunError, Context, FatalError, RetryPolicy, workflow


def _touch(path: str) -> None:
    Path(path).write_text("started", encoding="utf-8")


async def _wait_for_file(path: str) -> None:
    while not Path(path).exists():
        await asyncio.sleep(0.01)


# --- plain runs ---------------------------------------------------------------------------------


@workflow(id="e2e-echo", description="One step that echoes the input.")
async def echo(input: Any, ctx: Context) -> dict[str, Any]:
    value = await ctx.step("echo", lambda: input)
    return {"echo": value}


def _current_span() -> str:
    from opentelemetry import trace  # the otel extra (the dev extra installs it)

    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}-{ctx.span_id:016x}"


@workflow(id="e2e-traced", description="A step answering which trace span it runs under.")
async def traced(input: Any, ctx: Context) -> str:
    return str(await ctx.step("where", _current_span))


async def _boom(message: str) -> None:
    raise FatalError(message, code="E2E_BOOM")


@workflow(id="e2e-fail", description="A step fails with a FatalError (code E2E_BOOM).")
async def fail(input: Any, ctx: Context) -> None:
    await ctx.step("boom", _boom, "it broke")


@workflow(id="e2e-steps", description="Two steps and some metadata.")
async def steps(input: Any, ctx: Context) -> dict[str, Any]:
    a = await ctx.step("first", lambda: 1)
    ctx.metadata.set("stage", "half")
    b = await ctx.step("second", lambda: a + 1)
    ctx.metadata.set("stage", "done")
    ctx.metadata.increment("count", 2)
    return {"sum": a + b}


def _check_n(value: Any) -> Any:
    if not isinstance(value, dict) or not isinstance(value.get("n"), int):
        raise ValueError("input must be an object with an integer 'n'")
    return {"n": value["n"]}


@workflow(id="e2e-validated", input_validator=_check_n, description="Input must carry int n.")
async def validated(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"n": input["n"]}


# --- cancellation and compensation --------------------------------------------------------------


def _reserve() -> str:
    return "reserved"


def _release(output: Any) -> None:
    return None


async def _slow(marker: str) -> None:
    _touch(marker)
    await asyncio.sleep(60)


@workflow(id="e2e-slow", description="Reserve (compensated), then a step sleeping 60 s.")
async def slow(input: dict[str, Any], ctx: Context) -> str:
    await ctx.step("reserve", _reserve, compensate=_release)
    await ctx.step("slow", _slow, input["marker"])
    return "finished"


# --- waitpoints ---------------------------------------------------------------------------------


@workflow(id="e2e-event", description="Wait for an event (type, match, lookback from input).")
async def event_wait(input: dict[str, Any], ctx: Context) -> Any:
    payload = await ctx.wait_for_event(
        input["type"], match=input.get("match"), lookback=input.get("lookback")
    )
    return {"payload": payload}


@workflow(id="e2e-signal", description="Wait for the signal 'go'.")
async def signal_wait(input: Any, ctx: Context) -> Any:
    payload = await ctx.wait_for_signal("go")
    return {"payload": payload}


@workflow(id="e2e-token", description="Create a token, publish it in metadata, wait for it.")
async def token_wait(input: Any, ctx: Context) -> Any:
    token = await ctx.wait_for_token()
    ctx.metadata.set("token", token.id)
    payload = await token.wait()
    return {"payload": payload}


@workflow(id="e2e-sleep", description="Durable sleep, then one step.")
async def sleeper(input: dict[str, Any], ctx: Context) -> str:
    await ctx.sleep(input.get("seconds", 0.2))
    woke: str = await ctx.step("after", lambda: "woke")
    return woke


# --- child runs ---------------------------------------------------------------------------------


@workflow(id="e2e-parent", description="Invoke the child named in the input; return its output.")
async def parent(input: dict[str, Any], ctx: Context) -> Any:
    try:
        output = await ctx.invoke(input["child"], input.get("child_input", {}))
    except ChildRunError as exc:
        return {"child_error": exc.code, "message": str(exc)}
    return {"child_output": output}


# --- streams ------------------------------------------------------------------------------------


@workflow(id="e2e-stream", description="A text stream; the last chunk waits for a gate file.")
async def streaming(input: dict[str, Any], ctx: Context) -> str:
    gate = input.get("gate")

    async def source() -> Any:
        yield "hello "
        yield "stream "
        if gate:
            await _wait_for_file(gate)
        yield "world"

    return await ctx.stream.text("out", source)


@workflow(id="e2e-stream-paced",
          description="Text chunks 'c0'..., a pause before each; 'fail': the source then breaks.")
async def streaming_paced(input: dict[str, Any], ctx: Context) -> str:
    async def source() -> Any:
        for i in range(int(input["chunks"])):
            await asyncio.sleep(float(input["pause"]))
            yield f"c{i}"
        if input.get("fail"):
            raise ValueError("the source broke")

    try:
        return await ctx.stream.text("out", source)
    except Exception:  # the run completes, its stream has no final chunk
        return "broken"


@workflow(id="e2e-reserve-wait", description="Reserve (compensated), then wait for 'go'.")
async def reserve_wait(input: Any, ctx: Context) -> Any:
    await ctx.step("reserve", _reserve, compensate=_release)
    return await ctx.wait_for_signal("go")


# --- user code that only its own run may suffer from (structure issue) ---------------------------


@workflow(id="e2e-busy-sibling", description="One branch waits on ctx, the other on asyncio.")
async def busy_sibling(input: Any, ctx: Context) -> Any:
    async def other() -> Any:
        await asyncio.sleep(0.05)  # not a ctx operation: the run must keep running
        return await ctx.step("after", lambda: "x".upper())

    return await asyncio.gather(ctx.wait_for_event(input["type"]), other())


@workflow(id="e2e-wait-for-timeout", description="asyncio.wait_for around a ctx wait times out.")
async def wait_for_timeout(input: Any, ctx: Context) -> str:
    try:
        await asyncio.wait_for(ctx.wait_for_event(input["type"]), timeout=0.3)
    except TimeoutError:
        return await ctx.step("went-on", lambda: "timed out")
    return "event"


@workflow(id="e2e-system-exit", description="The body calls sys.exit(3) (a library might).")
async def system_exit(input: Any, ctx: Context) -> None:
    await ctx.step("before", lambda: 1)
    raise SystemExit(3)


def _interrupt() -> None:
    raise KeyboardInterrupt("step interrupted")


@workflow(id="e2e-step-interrupt", description="A step raises KeyboardInterrupt.")
async def step_interrupt(input: Any, ctx: Context) -> None:
    await ctx.step("interrupted", _interrupt)


@workflow(id="e2e-foreign-await", description="Waits on an asyncio.Event nobody sets.")
async def foreign_await(input: Any, ctx: Context) -> None:
    await ctx.step("before", lambda: 1)
    never = asyncio.Event()
    await never.wait()


@workflow(id="e2e-tagged", description="Branches on ctx.run.tags (replay must see them too).")
async def tagged(input: Any, ctx: Context) -> dict[str, Any]:
    if "vip" in ctx.run.tags:
        await ctx.step("vip-step", lambda: "VIP")
    else:
        await ctx.step("plain-step", lambda: "plain")
    return {"number": ctx.run.number, "attempt": ctx.run.attempt}


# --- run operations (pause, cancel, retry) -------------------------------------------------------


def _note(ledger: str, what: str) -> str:
    with open(ledger, "a", encoding="utf-8") as fh:
        fh.write(what + "\n")
    return what


async def _gated(marker: str, gate: str, ledger: str) -> str:
    _touch(marker)
    await _wait_for_file(gate)
    return _note(ledger, "gated")


@workflow(id="e2e-gated", description="Step 'gated' waits for input['gate'], then step 'after'.")
async def gated(input: dict[str, Any], ctx: Context) -> str:
    await ctx.step("gated", _gated, input["marker"], input["gate"], input["ledger"])
    await ctx.step("after", _note, input["ledger"], "after")
    return "done"


@workflow(id="e2e-started-gated",
          description="Step 'first', then 'gated' waits for input['gate'], then 'after'.")
async def started_gated(input: dict[str, Any], ctx: Context) -> str:
    # Its first commit says "running": a pause through another daemon sees a started run.
    await ctx.step("first", _note, input["ledger"], "first")
    await ctx.step("gated", _gated, input["marker"], input["gate"], input["ledger"])
    await ctx.step("after", _note, input["ledger"], "after")
    return "done"


def _flaky(fix: str, ledger: str) -> str:
    if not Path(fix).exists():
        raise FatalError("not fixed yet", code="E2E_FLAKY")
    return _note(ledger, "flaky")


@workflow(id="e2e-flaky", description="Step 'first', then 'flaky' fails until input['fix'].")
async def flaky(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    await ctx.step("first", _note, input["ledger"], "first")
    await ctx.step("flaky", _flaky, input["fix"], input["ledger"])
    return {"attempt": ctx.run.attempt}


async def _slow_release(gate: str, marker: str, output: Any) -> None:
    _touch(marker)
    await _wait_for_file(gate)


@workflow(id="e2e-slow-undo",
          description="Reserve, compensated slowly (until input['gate']), then wait for 'go'.")
async def slow_undo(input: dict[str, Any], ctx: Context) -> Any:
    gate, marker = input["gate"], input["marker"]
    await ctx.step("reserve", _reserve, compensate=partial(_slow_release, gate, marker))
    return await ctx.wait_for_signal("go")


# --- the dashboard's timeline --------------------------------------------------------------------


def _fail_twice(counter: str) -> str:
    path = Path(counter)
    calls = len(path.read_text(encoding="utf-8")) + 1 if path.exists() else 1
    path.write_text("x" * calls, encoding="utf-8")  # the daemon is another process
    if calls < 3:
        raise RuntimeError(f"attempt {calls} fails")
    return f"ok after {calls}"


@workflow(id="e2e-retried", description="A step fails twice, then succeeds (0.1 s backoff).")
async def retried(input: dict[str, Any], ctx: Context) -> str:
    await ctx.step("prepare", lambda: 1)
    out: str = await ctx.step("call", _fail_twice, input["counter"],
                              retry=RetryPolicy(max=3, backoff="fixed", initial=0.1))
    await ctx.sleep(0.1)
    return out
