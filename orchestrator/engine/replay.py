"""``wf replay RUN``: re-run a body against its journal, with no side effects, and report
whether it still follows the recorded history (the check itself is ``runtime.replaycheck``)."""

from __future__ import annotations

from typing import Any

import storage
from orchestrator.engine import bridge
from runtime import replaycheck
from runtime.workflow import WorkflowDefinition


async def check(definition: WorkflowDefinition, record: storage.Journal) -> dict[str, Any]:
    run = record.run
    return await replaycheck.check(
        definition, run.input, bridge.run_facts(run, definition), bridge.runtime_journal(record),
        str(run.status),
    )
