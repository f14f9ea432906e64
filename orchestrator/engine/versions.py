"""``wf versions``: which workflow versions and patch ids live runs still carry (SPEC §14), so
an operator knows when old code may go: a version with no live run is drained; a patch no
live run carries may have its call removed, once deprecated."""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

import storage
from runtime._state import PATCH_PREFIX
from runtime.workflow import Registry

LIVE = (storage.RunStatus.PENDING, storage.RunStatus.RUNNING, storage.RunStatus.WAITING,
        storage.RunStatus.PAUSED)


async def versions(
    store: storage.Storage, registry: Registry, workflow_id: str | None
) -> dict[str, Any]:
    live: list[storage.RunRecord] = []
    for status in LIVE:
        live.extend(await store.list_runs(status=status, workflow_id=workflow_id, limit=None))
    by_workflow: dict[str, list[storage.RunRecord]] = {}
    for run in live:
        by_workflow.setdefault(run.workflow_id, []).append(run)
    ids = set(by_workflow) | {d.id for d in registry}
    if workflow_id is not None:
        ids &= {workflow_id}
    out: list[dict[str, Any]] = []
    for wf_id in sorted(ids):
        runs = by_workflow.get(wf_id, [])
        seen = Counter(run.workflow_version or "" for run in runs)
        patches: Counter[str] = Counter()
        for run in runs:
            if run.status is storage.RunStatus.PENDING:
                continue  # nothing recorded yet
            journal = await store.load_journal(run.run_id)
            patches.update({s.step_id[len(PATCH_PREFIX):] for s in journal.steps
                            if s.step_id.startswith(PATCH_PREFIX)})
        definition = registry.get(wf_id)
        out.append({
            "workflow_id": wf_id,
            "registered_version": definition.version if definition is not None else None,
            "live_runs": len(runs),
            "versions": [{"version": v or None, "live_runs": n} for v, n in sorted(seen.items())],
            "patches": [{"patch_id": p, "live_runs": n} for p, n in sorted(patches.items())],
        })
    return {"workflows": out}


class Resumer(Protocol):
    async def resume_run(self, run: storage.RunRecord) -> storage.RunRecord: ...


async def resume_arrived_versions(
    store: storage.Storage, registry: Registry, ops: Resumer
) -> int:
    """At start: runs held ``VERSION_MISSING`` whose version this daemon registers move
    again (SPEC §14: a run resumes when a daemon that has its version starts)."""
    resumed = 0
    for run in await store.list_runs(status=storage.RunStatus.PAUSED, limit=None):
        code = run.error.get("code") if isinstance(run.error, dict) else None
        if (code == "VERSION_MISSING" and run.version_pinned and run.workflow_version
                and registry.get_version(run.workflow_id, run.workflow_version) is not None):
            await ops.resume_run(run)
            resumed += 1
    return resumed
