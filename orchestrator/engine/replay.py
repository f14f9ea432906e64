"""``wf replay RUN``: re-run a body against its journal, with no side effects, and report
whether it still follows the recorded history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import storage
from orchestrator.engine import bridge
from runtime import _signals
from runtime import journal as rj
from runtime.executor import Execution
from runtime.facts import HostServices
from runtime.workflow import WorkflowDefinition


async def _frontier_record(entry: rj.Entry) -> Sequence[rj.WaitpointResolved]:
    # Anything not already in the journal is where the recorded history ends: stop there.
    raise _signals.Suspended()


def _frontier_gate() -> None:
    raise _signals.Suspended()


async def check(definition: WorkflowDefinition, record: storage.Journal) -> dict[str, Any]:
    run = record.run
    facts = bridge.run_facts(run, definition)
    host = HostServices(record=_frontier_record, gate=_frontier_gate)
    execution = Execution(definition, run.input, facts, bridge.runtime_journal(record), host)
    try:
        outcome = await execution.advance()
    finally:
        await execution.close()
    detail = list(outcome.divergence)
    return {
        "diverged": bool(detail),
        "detail": detail,
        "reached": str(outcome.status),
        "recorded_status": str(run.status),
    }
