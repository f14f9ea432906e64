"""Every example workflow, run to its end through the engine (children, retries, compensations,
tokens, events, tags), replays against its journal without divergence: ``wf replay`` and a live
resume see the same run facts (they come from one ``RunRecord → RunFacts`` function)."""

from __future__ import annotations

from pathlib import Path

import examples.workflows  # noqa: F401  (registers the examples)
from orchestrator.engine.engine import Engine
from orchestrator.engine.settings import Settings
from runtime.workflow import REGISTRY, Registry
from tests.orchestrator.conftest import open_engine

EXAMPLES = ("greeting", "order-saga", "approval", "score-item", "fan-out", "payment-watch",
            "nightly-report")


def _take_examples() -> Registry:
    # Importing the examples registers them process-wide; nightly-report carries a live cron
    # schedule that every later embedded engine in this pytest process would arm. Move them into
    # a registry of their own.
    registry = Registry()
    for workflow_id in EXAMPLES:
        definition = REGISTRY.get(workflow_id)
        assert definition is not None, workflow_id
        registry.register(definition)
        REGISTRY.unregister(workflow_id)
    return registry


_EXAMPLES = _take_examples()


def examples_registry() -> Registry:
    return _EXAMPLES


async def _token_of(engine: Engine, run_id: str) -> str:
    while True:
        detail = await engine.get(run_id)
        tokens = [w["token_id"] for w in detail["waitpoints"] if w["token_id"]]
        if tokens and detail["status"] == "waiting":
            return tokens[0]
        await engine.wait(run_id, timeout=0.05)


async def test_every_example_replays_without_divergence(tmp_path: Path) -> None:
    assert {d.id for d in examples_registry()} == set(EXAMPLES)
    async with open_engine(tmp_path / "wf.db", registry=examples_registry(),
                           settings=Settings(warm_runs=0)) as engine:
        runs = [
            await engine.submit("greeting", {"name": " ada ", "pause": "50ms"}, tags=["vip"]),
            await engine.submit("order-saga", {"id": 1, "amount": 5}),
            await engine.submit("order-saga", {"id": 2, "fail_shipping": True}),
            await engine.submit("fan-out", {"items": ["a", "b", "c"]}),
            await engine.submit("payment-watch", {"order_id": 7}),
            (await engine.schedule_trigger("nightly-report"))["runs"][0],
            await engine.submit("approval", {"timeout": "1h"}),
        ]
        ids = [r["run_id"] for r in runs]
        await engine.send_event("payment.received", {"order_id": 7, "amount": 12})
        token = await _token_of(engine, ids[-1])
        await engine.complete_token(token, {"approved": True, "by": "ops"})
        ended = {i: await engine.wait(i, timeout=10) for i in ids}
        statuses = [ended[i]["status"] for i in ids]
        assert statuses == ["completed", "completed", "compensated", "completed", "completed",
                            "completed", "completed"], ended
        saga = await engine.get(ids[2])  # FatalError: one attempt, then compensations
        assert [c["step_id"] for c in saga["compensations"]] == ["charge", "reserve"]
        children = [r["run_id"] for r in (await engine.list(workflow_id="score-item"))["runs"]]
        assert len(children) == 3
        for run_id in [*ids, *children]:
            report = await engine.replay(run_id)
            assert report["diverged"] is False, (run_id, report)
