"""The timer facility: sleeps, waitpoint timeouts, retry backoffs, delayed starts, schedules.

Timers live in storage with absolute wall-clock due times. One task waits for the earliest one
with an asyncio timer (no polling loop), re-reads the wall clock when it wakes, and fires what is
due in one transaction per batch (storage deletes each timer and resolves its waitpoint together,
and refuses to fire a timer the wall clock has not reached). Fired resolutions go to the runs'
actors. A new timer earlier than the one waited for wakes the task through ``notify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import structlog

import storage
from orchestrator.engine import bridge
from orchestrator.engine.messages import Resolve
from orchestrator.engine.ports import Deliver
from runtime.clock import Clock
from storage.instruments import NO_INSTRUMENT, Instrument
from storage.tally import LATENCY_BUCKETS, Histograms

log = structlog.get_logger("wf.timers")

BATCH = 1000
# Upper bound on one wait, so a wall clock that jumps forward is noticed within this time.
MAX_WAIT = 1.0
# After a full disk, try firing again this often: writes resume once space returns.
FULL_RETRY = 1.0
# How long stop() lets a firing in progress finish before cancelling it.
STOP_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class TimerStats:
    fired: int
    next_due: float | None
    lag_total: float = 0.0
    """Sum over fired timers of (claimed at − due at), seconds: the mean lag is its growth
    over ``fired``'s (the health page's chart)."""
    lag_max: float = 0.0

    def to_dict(self) -> dict[str, float | int | None]:
        return {"timers_fired": self.fired, "next_due": self.next_due,
                "lag_total": self.lag_total, "lag_max": self.lag_max}


class Timers:
    """The one timer facility (SPEC §4). ``start()`` arms it; ``notify`` is told of new timers."""

    def __init__(
        self,
        storage_: storage.Storage,
        clock: Clock,
        deliver: Deliver,
        on_fatal: Callable[[BaseException], None],
        instrument: Instrument = NO_INSTRUMENT,
        on_run_timer: Callable[[storage.TimerRecord], None] | None = None,
        on_schedule_timer: Callable[[storage.TimerRecord], None] | None = None,
        lag: Histograms | None = None,
    ) -> None:
        self._storage = storage_
        self._clock = clock
        self._deliver = deliver
        self._on_run_timer = on_run_timer
        self._on_schedule_timer = on_schedule_timer
        self._on_fatal = on_fatal
        self._instrument = instrument
        self._wake = asyncio.Event()
        self._waiting_until = math.inf
        self._fired = 0
        self._lag_total = 0.0
        self._lag_max = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lag = lag if lag is not None else Histograms(LATENCY_BUCKETS)  # by timer kind

    def start(self) -> asyncio.Task[None]:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="timers")
        self._task.add_done_callback(self._died)
        return self._task

    def _died(self, task: asyncio.Task[None]) -> None:
        # A scheduler that stops means timers silently never fire: stop the daemon instead.
        if not task.cancelled() and task.exception() is not None:
            log.error("timers.crashed", error=repr(task.exception()))
            self._on_fatal(task.exception())  # type: ignore[arg-type]  # checked above

    async def stop(self) -> None:
        """Stop between firings, not inside one: a firing cancelled after its claim
        committed would leave its timers leased and undelivered until the lease ran out (a
        schedule's fire, a batch's flush). Past ``STOP_GRACE`` (a backlog still firing), cancel."""
        task = self._task
        if task is None or task.done():
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_GRACE)
        except TimeoutError:
            task.cancel()
        except Exception:  # reported by _died already
            pass
        await asyncio.gather(task, return_exceptions=True)

    def notify(self, due_at: float) -> None:
        """A timer due at ``due_at`` was stored: wake up if it is earlier than the awaited one."""
        if due_at < self._waiting_until:
            self._wake.set()

    async def fire_due(self) -> int:
        """Fire every timer due now (oldest first); return how many fired."""
        total = 0
        while True:
            now = self._clock.now()
            # A read first: no write transaction (and no trip through the writer) when
            # nothing is due, which is what most wake-ups find.
            due = await self._storage.next_timer_due()
            if due is None or due > now:
                break
            self._instrument.reached("timer.due")
            fired = await self._storage.claim_due_timers(now, BATCH)
            if fired:
                self._instrument.reached("timer.fired")
                claimed = self._clock.now()
                for item in fired:
                    lag = max(0.0, claimed - item.timer.due_at)
                    self._lag_total += lag
                    self._lag_max = max(self._lag_max, lag)
                    self._lag.observe((str(item.timer.kind),), lag)
            for item in fired:
                self._dispatch(item)
            total += len(fired)
            if len(fired) < BATCH or self._stopping:
                break
        self._fired += total
        return total

    def _dispatch(self, item: storage.FiredTimer) -> None:
        timer = item.timer
        if timer.kind is storage.TimerKind.SCHEDULE:
            if self._on_schedule_timer is not None:
                self._on_schedule_timer(timer)
            return
        if timer.run_id is None:
            if self._on_run_timer is not None:
                self._on_run_timer(timer)  # a timer of no run (a batch's timeout)
            return
        if item.waitpoint is not None:
            self._deliver(timer.run_id, Resolve(bridge.resolution(item.waitpoint)))
        elif timer.kind in (storage.TimerKind.START, storage.TimerKind.EXPIRE):
            if self._on_run_timer is not None:
                self._on_run_timer(timer)
            elif timer.kind is storage.TimerKind.START:
                self._deliver(timer.run_id, None)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.fire_due()
                due = await self._storage.next_timer_due()
            except (storage.StorageFull, storage.StorageBusy) as exc:
                # Nothing was fired (the batch rolled back whole): try again shortly.
                log.warning("timers.storage_unavailable", error=str(exc))
                with contextlib.suppress(TimeoutError):  # stop() ends the pause early
                    await asyncio.wait_for(self._wake.wait(), FULL_RETRY)
                continue
            now = self._clock.now()
            if self._stopping:
                return
            if due is not None and due <= now:
                continue
            self._waiting_until = due if due is not None else math.inf
            # With no timer stored, only notify() can make one due: wait for it alone.
            wait = None if due is None else min(MAX_WAIT, due - now)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except TimeoutError:
                pass
            finally:
                self._waiting_until = math.inf

    def stats(self) -> TimerStats:
        return TimerStats(self._fired, None if math.isinf(self._waiting_until)
                          else self._waiting_until, self._lag_total, self._lag_max)
