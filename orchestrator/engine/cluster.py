"""Many daemons on one database (SPEC §13): the loop through which a daemon takes its share.

Every tick (a third of the lease, at most a second) a daemon in a cluster:
- declares dead every daemon whose lease ran out (database clock) and releases its runs
  (``RescueDaemons``; on PostgreSQL the release waits for a dead daemon's batch in flight);
- claims unowned runs that are not ended (``ClaimRuns``, ``FOR UPDATE SKIP LOCKED``) and takes
  them over as recovery does at start: a run in flight restarts (its step runs again, at most
  once more per takeover), a waiting one with a resolution resumes, a cancel is carried out;
- re-reads the earliest timer, so timers of adopted runs fire here (claims are SKIP LOCKED:
  each fires once whichever daemon gets it);
- admits queued runs of concurrency groups with room (``AdmitRuns``, flow control's safety
  net: the daemon where a slot frees admits the next run at once, this catches the rest);
- resumes its own runs that another daemon resolved or cancelled (the resolution is recorded
  there; the owner finds it here within a tick, instead of a LISTEN/NOTIFY hop for now).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

import storage

log = structlog.get_logger("wf.cluster")


class ClusterLoop:
    def __init__(
        self,
        storage_: storage.Storage,
        daemon_id: str,
        interval: float,
        *,
        claim_limit: int,
        take_over: Callable[[list[storage.RunRecord]], Awaitable[int]],
        move: Callable[[storage.RunRecord], Awaitable[None]],
        timer_due: Callable[[float], None],
        pump: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._storage = storage_
        self.daemon_id = daemon_id
        self.interval = interval
        self._claim_limit = claim_limit
        self._take_over = take_over
        self._move = move
        self._timer_due = timer_due
        self._pump = pump
        self._task: asyncio.Task[None] | None = None
        self.adopted = 0

    async def claim(self) -> list[storage.RunRecord]:
        """Rescue the dead, then claim what nobody owns; the claimed runs, to take over."""
        dead = await self._storage.execute(storage.RescueDaemons(self.daemon_id))
        if dead:
            log.warning("daemons.rescued", dead=list(dead))
        claimed = await self._storage.execute(
            storage.ClaimRuns(self.daemon_id, limit=self._claim_limit))
        return [c.run for c in claimed]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except storage.OwnershipLost:
                return  # the lease keeper stops the daemon
            except Exception as exc:  # the database is away: try again next tick
                log.warning("cluster.tick_failed", error=repr(exc))

    async def tick(self) -> None:
        claimed = await self.claim()
        if claimed:
            self.adopted += await self._take_over(claimed)
            log.info("runs.adopted", runs=len(claimed))
        if self._pump is not None:
            # Flow control's safety net: queued runs whose slot freed without a pump reaching
            # them (a lock was busy, a pause was lifted, a limit was raised) start within a tick.
            await self._pump()
        due = await self._storage.next_timer_due()
        if due is not None:
            self._timer_due(due)
        for run_id in await self._storage.owned_runs_to_move(self.daemon_id):
            run = await self._storage.get_run(run_id)
            if run is not None:
                await self._move(run)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
