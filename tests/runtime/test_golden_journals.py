"""Replay against recorded journals: same end, no side effects, divergence reported as data.

Regenerate a golden file only on purpose: WF_REGENERATE_GOLDEN=1 pytest tests/runtime.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pytest

from runtime import workflow
from runtime.clock import ManualClock
from runtime.executor import Execution
from runtime.facts import HostServices, RunFacts
from runtime.journal import Entry, Journal, WaitpointResolved
from runtime.status import RunStatus
from runtime.testing import run_workflow_for_test
from runtime.workflow import definition_of
from tests.runtime import golden

T0 = 1_700_000_000.0
calls: list[str] = []


def charge(amount: int) -> dict[str, Any]:
    calls.append("charge")
    return {"charged": amount}


@workflow(id="golden-order", version="1")
async def golden_order(input: dict, ctx) -> dict:
    charged = await ctx.step("charge", charge, input["amount"])
    await ctx.sleep("1h")
    shipped = await ctx.wait_for_event("shipped", match={"order": input["order"]})
    ctx.metadata.set("tracking", shipped["tracking"])
    return {**charged, "tracking": shipped["tracking"], "token": ctx.random_uuid()}


@workflow(id="golden-order-v2", version="2")
async def golden_order_v2(input: dict, ctx) -> dict:
    # A code change: a new step before the recorded one, and the charge step renamed.
    await ctx.step("validate", lambda: True)
    charged = await ctx.step("charge-card", charge, input["amount"])
    return charged


INPUT = {"order": "o-1", "amount": 30}


class ReplayOnly:
    """A host that refuses anything new: a pure replay must not need it."""

    def __init__(self) -> None:
        self.clock = ManualClock(T0)
        self.recorded: list[Entry] = []

    async def record(self, entry: Entry) -> Sequence[WaitpointResolved]:
        self.recorded.append(entry)
        return ()


async def replay(wf: Any, entries: list[Entry]) -> tuple[Any, ReplayOnly]:
    definition = definition_of(wf)
    host = ReplayOnly()
    facts = RunFacts("golden-run", definition.id, definition.version, T0)
    execution = Execution(definition, INPUT, facts, Journal(entries),
                          HostServices(record=host.record, clock=host.clock))
    outcome = await execution.advance()
    await execution.close()
    return outcome, host


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


async def test_golden_journal_is_what_the_workflow_records() -> None:
    res = await run_workflow_for_test(
        golden_order, INPUT, run_id="golden-run", now=T0,
        events={"shipped": [{"order": "o-2", "tracking": "x"}, {"order": "o-1", "tracking": "T1"}]},
    )
    if os.environ.get("WF_REGENERATE_GOLDEN"):
        (golden.DIR / "order.json").write_text(golden.dump(res.journal))
    assert golden.dump(res.journal) == (golden.DIR / "order.json").read_text()


async def test_replaying_a_golden_journal_reaches_the_same_end_without_side_effects() -> None:
    outcome, host = await replay(golden_order, golden.load("order.json"))
    assert outcome.status == RunStatus.COMPLETED
    assert outcome.output == {"charged": 30, "tracking": "T1",
                              "token": "f9d45e30-4063-4a58-a372-9b8f1a2c3056"}
    assert outcome.divergence == ()
    assert calls == []
    assert [type(e).__name__ for e in host.recorded] == []  # the metadata op is in the journal


async def test_changed_code_against_a_golden_journal_reports_divergence() -> None:
    entries = [e for e in golden.load("order.json")]
    outcome, _ = await replay(golden_order_v2, entries)
    assert outcome.status == RunStatus.PAUSED
    (found,) = outcome.divergence
    assert found["kind"] == "inserted" and found["unconsumed"]["step_ids"] == ["charge"]
    assert calls == []  # the renamed step is new work before a recorded one: never run
