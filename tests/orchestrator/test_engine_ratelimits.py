"""Step rate limits on a real engine (SPEC §2a): buckets stored in the database, shared by every
run, a list taken all or none, ``on_limit="fail"`` failing the step with ``RATE_LIMITED``.

The limits refill over an hour, so within a test a spent bucket stays spent: what a test sees
is what was taken, never what the clock gave back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime import Context
from runtime.ratelimit import RateLimit
from runtime.retry import RetryPolicy
from runtime.workflow import Registry, WorkflowDefinition
from tests.orchestrator.conftest import open_engine

ONCE = RetryPolicy(max=1)  # RateLimitExceeded is retryable: one attempt shows the failure
API = RateLimit("api", 2, "1h", on_limit="fail")
PARTNER = RateLimit("partner", 1, "1h", on_limit="fail")
CALLS: list[str] = []


async def _call_api(input: Any, ctx: Context) -> Any:
    def call() -> str:
        CALLS.append(ctx.run.id)
        return "ok"

    return await ctx.step("call", call, retry=ONCE, rate_limit=API)


async def _call_both(input: Any, ctx: Context) -> Any:
    def call() -> str:
        CALLS.append(ctx.run.id)
        return "ok"

    return await ctx.step("call", call, retry=ONCE, rate_limit=[API, PARTNER])


def _registry() -> Registry:
    reg = Registry()
    for id, fn in (("api-one", _call_api), ("api-both", _call_both)):
        reg.register(WorkflowDefinition(id=id, fn=fn, version="1", origin=f"{__name__}:{id}"))
    return reg


async def _end(engine: Any, workflow_id: str, run_id: str) -> dict[str, Any]:
    await engine.submit(workflow_id, {}, run_id=run_id)
    done: dict[str, Any] = await engine.wait(run_id, timeout=5)
    return done


async def test_a_spent_bucket_stays_spent_across_a_restart(
    db_path: Path,
) -> None:
    CALLS.clear()
    reg = _registry()
    async with open_engine(db_path, registry=reg) as engine:
        assert (await _end(engine, "api-one", "a1"))["status"] == "completed"
    async with open_engine(db_path, registry=reg) as engine:
        # One unit left after the restart (a refill would give two): a2 takes it, a3 finds none.
        assert (await _end(engine, "api-one", "a2"))["status"] == "completed"
        refused = await _end(engine, "api-one", "a3")
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "RATE_LIMITED", refused["error"]
    assert CALLS == ["a1", "a2"]


async def test_a_list_of_limits_is_taken_all_or_none_from_buckets_shared_by_workflows(
    db_path: Path,
) -> None:
    CALLS.clear()
    async with open_engine(db_path, registry=_registry()) as engine:
        # b1 takes one unit of each; b2 finds partner empty and must take nothing from api ...
        assert (await _end(engine, "api-both", "b1"))["status"] == "completed"
        refused = await _end(engine, "api-both", "b2")
        assert refused["status"] == "failed"
        assert refused["error"]["code"] == "RATE_LIMITED"
        # ... so the api bucket still has the one unit b1 left.
        assert (await _end(engine, "api-one", "a1"))["status"] == "completed"
        assert (await _end(engine, "api-one", "a2"))["status"] == "failed"
    assert CALLS == ["b1", "a1"]
