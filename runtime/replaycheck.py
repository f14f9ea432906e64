"""Replay a recorded run against the code loaded now, with no side effects, and say whether it
still follows its journal (SPEC §3, §14): ``wf replay RUN``, ``wf replay --check`` and
:func:`runtime.testing.replay_check` all use :func:`check`.

Nothing the body asks for beyond the journal runs: the first entry it would record stops it
there (the frontier), so a check never calls a step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from runtime import _signals
from runtime import journal as rj
from runtime.executor import Execution
from runtime.facts import HostServices, RunFacts
from runtime.journal_file import ExportedRun
from runtime.workflow import Registry, WorkflowDefinition


async def _frontier_record(entry: rj.Entry) -> Sequence[rj.WaitpointResolved]:
    # Anything not already in the journal is where the recorded history ends: stop there.
    raise _signals.Suspended()


def _frontier_gate() -> None:
    raise _signals.Suspended()


async def check(
    definition: WorkflowDefinition,
    input: Any,
    facts: RunFacts,
    journal: rj.Journal,
    recorded_status: str,
) -> dict[str, Any]:
    """``{"diverged", "detail", "reached", "recorded_status"}`` of one replay."""
    host = HostServices(record=_frontier_record, gate=_frontier_gate)
    execution = Execution(definition, input, facts, journal, host)
    try:
        outcome = await execution.advance()
    finally:
        await execution.close()
    detail = list(outcome.divergence)
    return {
        "diverged": bool(detail),
        "detail": detail,
        "reached": str(outcome.status),
        "recorded_status": recorded_status,
    }


async def check_exported(run: ExportedRun, registry: Registry) -> dict[str, Any]:
    """One exported run: ``result`` is ``ok``, ``diverged`` (with ``entry``, where it
    diverged) or ``workflow_not_registered``."""
    found: dict[str, Any] = {"run_id": run.run_id, "workflow_id": run.workflow_id,
                             "workflow_version": run.run.get("workflow_version")}
    definition = registry.get(run.workflow_id)
    if definition is None:
        return {**found, "result": "workflow_not_registered",
                "message": f"workflow {run.workflow_id!r} is not registered by the loaded code"}
    report = await check(definition, run.input, run.facts(definition.version), run.journal(),
                         str(run.run.get("status")))
    if not report["diverged"]:
        return {**found, "result": "ok", "reached": report["reached"]}
    return {**found, "result": "diverged", "entry": first_divergence(report["detail"]),
            "detail": report["detail"], "reached": report["reached"]}


def first_divergence(detail: list[dict[str, Any]]) -> dict[str, Any]:
    """The divergence that matters most: the one that holds a run, else the first."""
    for kind in ("waitpoint", "inserted", "patch", "unreached"):
        for item in detail:
            if item.get("kind") == kind:
                return item
    return detail[0]


async def check_all(
    runs: Iterable[ExportedRun], registry: Registry, *, fail_fast: bool = False
) -> list[dict[str, Any]]:
    """Check every run; with ``fail_fast`` stop after the first that is not ``ok``."""
    results: list[dict[str, Any]] = []
    for run in runs:
        result = await check_exported(run, registry)
        results.append(result)
        if fail_fast and result["result"] != "ok":
            break
    return results
