"""Step rate limits on a real engine (SPEC §2a): buckets stored in the database, shared by every
run and by every daemon on one PostgreSQL database, a list taken all or none, ``on_limit="fail"``
failing the step with ``RATE_LIMITED``, ``"queue"`` waiting for the refill.

The limits refill over an hour, so within a test a spent bucket stays spent: what a test sees
is what was taken, never what the clock gave back.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Config
from orchestrator.daemon.compose import Orchestrator
from runtime import Context, RateLimitExceeded
from runtime.ratelimit import RateLimit
from runtime.retry import RetryPolicy
from runtime.workflow import Registry, WorkflowDefinition
from tests.orchestrator.conftest import open_engine

ONCE = RetryPolicy(max=1)  # RateLimitExceeded is retryable: one attempt shows the failure
API = RateLimit("api", 2, "1h", on_limit="fail")
PARTNER = RateLimit("partner", 1, "1h", on_limit="fail")
QUEUED = RateLimit("slow", 1, "0.5s")  # on_limit="queue": a short bucket waits for its refill
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


async def _call_slowly(input: Any, ctx: Context) -> Any:
    return await ctx.step("call", time.time, rate_limit=QUEUED)


async def _call_or_say_why(input: Any, ctx: Context) -> Any:
    try:
        return await _call_api(input, ctx)
    except RateLimitExceeded as exc:  # the type itself reaches the body, not a wrapper
        return {"refused": exc.code, "retry_after": exc.retry_after}


def _registry() -> Registry:
    reg = Registry()
    for id, fn in (("api-one", _call_api), ("api-both", _call_both), ("slow", _call_slowly),
                   ("api-caught", _call_or_say_why)):
        reg.register(WorkflowDefinition(id=id, fn=fn, version="1", origin=f"{__name__}:{id}"))
    return reg


async def _end(engine: Any, workflow_id: str, run_id: str) -> dict[str, Any]:
    await engine.submit(workflow_id, {}, run_id=run_id)
    done: dict[str, Any] = await engine.wait(run_id, timeout=5)
    return done


@pytest.mark.both_backends
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


@pytest.mark.both_backends
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


async def test_on_limit_fail_raises_rate_limit_exceeded_in_the_body(db_path: Path) -> None:
    CALLS.clear()
    async with open_engine(db_path, registry=_registry()) as engine:
        for run_id in ("c1", "c2"):
            assert (await _end(engine, "api-one", run_id))["status"] == "completed"
        caught = await _end(engine, "api-caught", "c3")
    assert caught["status"] == "completed"
    assert caught["output"]["refused"] == "RATE_LIMITED"
    assert 0 < caught["output"]["retry_after"] <= 1800  # half the hour refills one unit
    assert CALLS == ["c1", "c2"]


@pytest.mark.both_backends
async def test_a_queued_take_waits_for_the_refill_then_runs(db_path: Path) -> None:
    async with open_engine(db_path, registry=_registry()) as engine:
        first = await _end(engine, "slow", "s1")
        second = await _end(engine, "slow", "s2")
    assert (first["status"], second["status"]) == ("completed", "completed")
    assert 0.45 <= second["output"] - first["output"] < 2.0


async def test_daemons_on_one_postgres_database_take_from_one_bucket(
    tmp_path: Path, pg_url: str
) -> None:
    """SPEC §2a, §13: a bucket is shared by every daemon on the database. Daemon A has read the
    bucket before B took from it; A's next take must see B's, not its own earlier copy."""
    CALLS.clear()
    reg = _registry()

    def daemon(name: str) -> Orchestrator:
        cfg = Config.default(tmp_path / name)
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, url=pg_url))
        return Orchestrator(cfg, registry=reg, import_modules=False, configure_logging=False)

    async with daemon("a") as a, daemon("b") as b:
        assert (await _end(a, "api-one", "a1"))["status"] == "completed"
        assert (await _end(b, "api-one", "b1"))["status"] == "completed"
        refused = await _end(a, "api-one", "a2")  # two units per hour: none left
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "RATE_LIMITED", refused["error"]
    assert sorted(CALLS) == ["a1", "b1"]
