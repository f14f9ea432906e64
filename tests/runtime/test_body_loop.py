"""The body's own event loop: what user code may do on it, and what it can break (only its run)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from runtime import current_step, workflow
from runtime.journal import Journal, StepAttempt
from runtime.status import RunStatus
from runtime.testing import run_workflow_for_test

ran: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


class Stop(BaseException):
    """A user's own BaseException subclass."""


@workflow(id="bl-body-raises")
async def body_raises_wf(input: Any, ctx: Any) -> None:
    await ctx.step("booked", lambda: "b1", compensate=lambda out: ran.append(f"undo {out}"))
    kind = input["raise"]
    if kind == "exit":
        raise SystemExit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt("ctrl-c in a body")
    if kind == "generator":
        raise GeneratorExit("closing")
    if kind == "cancelled":
        raise asyncio.CancelledError("the body's own")
    raise Stop("custom")


@pytest.mark.parametrize(
    ("kind", "name", "message"),
    [
        ("exit", "SystemExit", "3"),
        ("interrupt", "KeyboardInterrupt", "ctrl-c in a body"),
        ("generator", "GeneratorExit", "closing"),
        ("cancelled", "CancelledError", "the body's own"),
        ("custom", "Stop", "custom"),
    ],
)
async def test_a_base_exception_from_the_body_fails_only_its_run(
    kind: str, name: str, message: str, replay: str
) -> None:
    res = await run_workflow_for_test(body_raises_wf, {"raise": kind}, replay=replay)
    assert res.status == RunStatus.COMPENSATED  # compensations ran as for any failure
    assert res.error["name"] == name and res.error["message"] == message
    assert res.error["code"] == "UNKNOWN"
    assert ran == ["undo b1"]


def _sync_exit() -> None:
    raise SystemExit(4)


async def _async_interrupt() -> None:
    raise KeyboardInterrupt("in a step")


async def _async_cancelled() -> None:
    raise asyncio.CancelledError("raised by the step itself")


@workflow(id="bl-step-raises", retry=None)
async def step_raises_wf(input: Any, ctx: Any) -> str:
    from runtime import RetryPolicy

    fns = {"thread-exit": _sync_exit, "interrupt": _async_interrupt,
           "cancelled": _async_cancelled}
    try:
        await ctx.step("bad", fns[input["fn"]], retry=RetryPolicy(max=3))
    except Exception as exc:  # the body sees the same error live and on replay
        ran.append(type(exc).__name__)
        raise
    return "not reached"


@pytest.mark.parametrize(
    ("fn", "name"),
    [("thread-exit", "SystemExit"), ("interrupt", "KeyboardInterrupt"),
     ("cancelled", "CancelledError")],
)
async def test_a_base_exception_from_a_step_fails_the_step_once(
    fn: str, name: str, replay: str
) -> None:
    res = await run_workflow_for_test(step_raises_wf, {"fn": fn}, replay=replay)
    assert res.status == RunStatus.FAILED
    assert res.error["name"] == name and res.error["code"] == "UNKNOWN"
    attempts = [e for e in res.journal if isinstance(e, StepAttempt)]
    assert len(attempts) == 1 and attempts[0].retry_at is None  # never retried
    assert attempts[0].error["name"] == name
    assert ran == ["WorkflowError"]


async def test_asyncio_to_thread_in_a_body_works(replay: str) -> None:
    @workflow(id="bl-to-thread")
    async def wf(input: Any, ctx: Any) -> list[Any]:
        name = await asyncio.to_thread(lambda: threading.current_thread().name)
        await ctx.sleep("1s")
        return [name != threading.main_thread().name, await ctx.step("s", lambda: 1)]

    res = await run_workflow_for_test(wf, {}, replay=replay)
    assert res.status == RunStatus.COMPLETED and res.output == [True, 1]


async def test_asyncio_primitives_work_on_the_body_loop() -> None:
    @workflow(id="bl-primitives")
    async def wf(input: Any, ctx: Any) -> list[Any]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        lock = asyncio.Lock()
        got: list[int] = []

        async def producer() -> None:
            for i in range(3):
                async with lock:
                    await queue.put(await ctx.step(f"p{i}", lambda i=i: i))
                await asyncio.sleep(0.001)

        async def consumer() -> None:
            for _ in range(3):
                got.append(await queue.get())

        async with asyncio.timeout(5):
            await asyncio.gather(producer(), consumer())
        done, _ = await asyncio.wait([asyncio.ensure_future(asyncio.sleep(0, "x"))])
        return [got, [t.result() for t in done], asyncio.current_task() is not None]

    res = await run_workflow_for_test(wf, {})
    assert res.status == RunStatus.COMPLETED and res.output == [[0, 1, 2], ["x"], True]


async def test_socket_io_on_the_body_loop_is_refused_clearly() -> None:
    @workflow(id="bl-socket")
    async def wf(input: Any, ctx: Any) -> None:
        await asyncio.open_connection("127.0.0.1", 9)

    res = await run_workflow_for_test(wf, {})
    assert res.status == RunStatus.FAILED and res.error["name"] == "RuntimeError"
    message = res.error["message"]
    assert "workflow body cannot open a connection" in message and "ctx.step" in message


async def test_a_subprocess_from_the_body_is_refused_but_a_step_may_do_io() -> None:
    async def io_in_a_step() -> str:
        loop = asyncio.get_running_loop()
        return type(loop).__name__

    @workflow(id="bl-subprocess")
    async def wf(input: Any, ctx: Any) -> str:
        host_loop = await ctx.step("io", io_in_a_step)
        try:
            await asyncio.create_subprocess_exec("true")
        except RuntimeError as exc:
            return f"{host_loop} | {exc}"
        return "spawned"

    res = await run_workflow_for_test(wf, {})
    assert res.status == RunStatus.COMPLETED
    assert not res.output.startswith("BodyLoop") and "start a subprocess" in res.output


async def test_current_step_works_in_async_and_thread_steps(replay: str) -> None:
    async def in_async() -> str:
        await asyncio.sleep(0)
        step = current_step()
        return f"{step.step_id}#{step.attempt}"

    def in_thread() -> str:
        step = current_step()
        in_a_thread = threading.current_thread() is not threading.main_thread()
        return f"{step.step_id}#{step.attempt}@{in_a_thread}"

    @workflow(id="bl-current-step")
    async def wf(input: Any, ctx: Any) -> list[Any]:
        a = await ctx.step("a", in_async)
        await ctx.sleep("1s")
        b = await ctx.step("b", in_thread)
        try:
            current_step()
        except LookupError:
            outside = "no step in the body"
        return [a, b, outside]

    res = await run_workflow_for_test(wf, {}, replay=replay)
    assert res.output == ["a#1", "b#1@True", "no step in the body"]


def test_the_journal_refuses_an_entry_type_it_does_not_know() -> None:
    with pytest.raises(TypeError, match="unknown journal entry"):
        Journal([object()])  # type: ignore[list-item]
