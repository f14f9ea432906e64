"""Retention (SPEC §12): prune ended runs and old events in small batches, then give the freed
pages back to the file system.

Each batch is one short writer op (``PruneRuns`` of at most ``RUN_BATCH`` run trees that stops
between trees once ``RUN_BUDGET`` of deletes is spent: a tree's cost varies with its rows and
the full-text index's merges, so a count alone could not bound it), and the
loop yields to the event loop between batches, so submits and step results interleave with a
large prune instead of queueing behind it. The daemon's sweep runs every ``SWEEP_EVERY``
seconds of real time (the cadence has no meaning for correctness; ages are measured on the
engine's clock), and ``prune`` does the same on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import structlog

import storage
from runtime.clock import Clock

log = structlog.get_logger("orchestrator.retention")

RUN_BATCH = 50  # run trees per writer op at most
RUN_BUDGET = 0.003  # seconds of deletes per writer op: it stops between trees past this
EVENT_BATCH = 500
VACUUM_PAGES = 256  # pages per incremental_vacuum transaction (1 MiB at 4 KiB pages)
# Full-text index merges one `wf prune` may run. Each rewrites the whole index into one segment
# (FTS5 'merge' with a negative budget: no smaller step exists once deletes cancel inserts, and
# only a merge into the oldest segment drops delete markers); under steady inserts a new segment
# always exists, so "until nothing is left" would never end.
MAX_INDEX_MERGES = 4
# The sweep merges the index once per this many seconds (real time) at most: without it the
# delete markers pile up and the file grows under steady load; with it every sweep, the writer
# would spend its time rewriting the index.
INDEX_MERGE_EVERY = 3600.0
SWEEP_EVERY = 300.0

S = storage.RunStatus
# Which config age applies to which ended status.
STATUS_GROUPS: dict[str, tuple[storage.RunStatus, ...]] = {
    "completed": (S.COMPLETED,),
    "failed": (S.FAILED, S.COMPENSATED, S.COMPENSATION_FAILED, S.TIMED_OUT),
    "cancelled": (S.CANCELLED,),
}


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Ages in seconds; None keeps forever."""

    completed: float | None = None
    failed: float | None = None
    cancelled: float | None = None
    events: float | None = None

    @property
    def enabled(self) -> bool:
        return any(a is not None for a in (self.completed, self.failed, self.cancelled,
                                           self.events))

    def runs(self) -> list[tuple[tuple[storage.RunStatus, ...], float]]:
        """(statuses, age) for every status group with an age."""
        ages = {"completed": self.completed, "failed": self.failed, "cancelled": self.cancelled}
        return [(STATUS_GROUPS[k], a) for k, a in ages.items() if a is not None]


class Retention:
    def __init__(self, storage_: storage.Storage, clock: Clock, policy: RetentionPolicy) -> None:
        self._storage = storage_
        self._clock = clock
        self.policy = policy
        self._task: asyncio.Task[None] | None = None
        self._last_merge = time.monotonic()

    def start(self) -> None:
        if self.policy.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep_forever(),
                                                                name="retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await self.sweep()
            except storage.StorageError as exc:  # busy/full: try again next time
                log.warning("retention.sweep_failed", error=str(exc))

    async def sweep(self) -> dict[str, int]:
        """One pass of the configured policy: ``{"runs": n, "events": n}`` deleted."""
        now = self._clock.now()
        runs = 0
        for statuses, age in self.policy.runs():
            runs += await self.prune_runs(statuses, now - age)
        events = 0
        if self.policy.events is not None:
            events = await self.prune_events(now - self.policy.events)
        if runs or events:
            merge = time.monotonic() - self._last_merge >= INDEX_MERGE_EVERY
            await self.vacuum(merges=1 if merge else 0)
            log.info("retention.pruned", runs=runs, events=events, index_merged=merge)
        return {"runs": runs, "events": events}

    async def prune_runs(
        self, statuses: tuple[storage.RunStatus, ...], before: float,
        workflow_id: str | None = None,
    ) -> int:
        total = 0
        while True:
            gone = await self._storage.execute(
                storage.PruneRuns(statuses, before, workflow_id, limit=RUN_BATCH,
                                  budget=RUN_BUDGET)
            )
            total += len(gone)
            if len(gone) == 0:
                return total
            await asyncio.sleep(0)  # let other writers in between batches

    async def prune_events(self, before: float) -> int:
        total = 0
        while True:
            n = await self._storage.execute(storage.PruneEvents(before, EVENT_BATCH))
            total += n
            if n < EVENT_BATCH:
                return total
            await asyncio.sleep(0)

    async def vacuum(self, *, merges: int = 0) -> None:
        """Shrink the file by the pages pruning freed, a few hundred pages per transaction.
        First up to ``merges`` full-text index merges fold its delete markers in (``wf prune``:
        ``MAX_INDEX_MERGES``; the sweep: one per ``INDEX_MERGE_EVERY``), each holding the
        writer for a time that grows with the index (~0.3-0.8 s at 100k runs)."""
        for _ in range(merges):
            self._last_merge = time.monotonic()
            if not await self._storage.execute(storage.MergeSearchIndex(VACUUM_PAGES)):
                break
            await asyncio.sleep(0)  # let other writers in between merges
        free = await self._storage.execute(storage.IncrementalVacuum(VACUUM_PAGES))
        while free > 0:
            await asyncio.sleep(0)
            left = await self._storage.execute(storage.IncrementalVacuum(VACUUM_PAGES))
            if left >= free:  # not an auto_vacuum=INCREMENTAL file: the pages stay for reuse
                return
            free = left
