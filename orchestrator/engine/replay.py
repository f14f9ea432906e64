"""``wf replay RUN``: re-run a body against its journal, with no side effects, and report
whether it still follows the recorded history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import storage
from orchestrator.engine import bridge as entries
from runtime import _signals
from runtime import journal as rj
from runtime.executor import Execution
from runtime.facts import HostServices, RunFacts
from runtime.workflow import WorkflowDefinition


async def _frontier_record(entry: rj.Entry) -> Sequence[rj.WaitpointResolved]:
    # Anything not already in the journal is where the recorded history ends: stop there.
    raise _signals.Suspended()


def _frontier_gate() -> None:
    raise _signals.Suspended()


async def check(definition: WorkflowDefinition, record: storage.Journal) -> dict[str, Any]:
    run = record.run
    facts = RunFacts(
        run_id=run.run_id,
        workflow_id=run.workflow_id,
        workflow_version=run.workflow_version or definition.version,
        started_at=run.started_at if run.started_at is not None else run.created_at,
        parent_run_id=run.parent_run_id,
        root_run_id=run.root_run_id,
    )
    host = HostServices(record=_frontier_record, gate=_frontier_gate)
    execution = Execution(definition, run.input, facts, entries.runtime_journal(record), host)
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
