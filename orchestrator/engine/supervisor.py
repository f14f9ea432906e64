"""The supervisor: owns every actor, the active-run slots and the warm cache.

``deliver(run_id, message)`` is the one way to make a run move: it posts to the run's live actor
or starts one. At most one actor exists per run (the dict below is the proof: an actor removes
itself, without awaiting, when it parks or ends, and only then can a new one start). Actors run
in one of ``max_active_runs`` slots; extra runs wait in a queue (an entry, not a task) and
stay ``pending``, so nothing is dropped; resuming runs get slots before runs that have not
started (``orchestrator.slots``). Parked executions are kept warm in LRU order up to ``warm_runs``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

import storage
from orchestrator.engine.actor import Cancel, Message, RunActor
from orchestrator.engine.slots import SlotQueue, rank
from orchestrator.engine.streams import StreamHub
from runtime._signals import HostFailure, Suspended
from runtime.clock import Clock
from runtime.executor import Execution
from runtime.facts import Limits, ProcessRunner
from runtime.ratelimit import RateLimiter
from runtime.workflow import Registry

if TYPE_CHECKING:
    from orchestrator.engine.timers import Scheduler

log = structlog.get_logger("wf.supervisor")

# How long an actor whose storage write failed (disk full) waits before it tries again.
STORAGE_RETRY_SECONDS = 1.0


@dataclass(slots=True)
class _Queued:
    known: storage.RunRecord | None
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class SupervisorStats:
    active_actors: int
    warm_runs: int
    slots_free: int
    runs_queued: int
    actors_started: int
    actor_failures: int

    def to_dict(self) -> dict[str, int]:
        return {
            "active_actors": self.active_actors,
            "warm_runs": self.warm_runs,
            "slots_free": self.slots_free,
            "runs_queued": self.runs_queued,
            "actors_started": self.actors_started,
            "actor_failures": self.actor_failures,
        }


class Supervisor:
    def __init__(
        self,
        *,
        storage_: storage.Storage,
        registry: Registry,
        clock: Clock,
        max_active_runs: int,
        warm_runs: int,
        limits: Limits,
        rate_limiter: RateLimiter,
        thread_pool: Executor | None,
        process_runner: ProcessRunner | None,
        on_finished: Callable[[storage.RunRecord], None],
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.storage = storage_
        self.registry = registry
        self.clock = clock
        self.limits = limits
        self.rate_limiter = rate_limiter
        self.thread_pool = thread_pool
        self.process_runner = process_runner
        self.streams = StreamHub()
        self.scheduler: Scheduler  # set by the orchestrator right after construction
        self._slots = SlotQueue(max_active_runs)
        # Runs waiting for a slot: what to start them with (no actor or task exists for them).
        self._queued: dict[str, _Queued] = {}
        self._max_active = max_active_runs
        self._warm_budget = warm_runs
        self._actors: dict[str, RunActor] = {}
        self._warm: OrderedDict[str, tuple[Execution, storage.RunRecord]] = OrderedDict()
        self._closers: set[asyncio.Task[None]] = set()
        self._on_finished = on_finished
        self._on_fatal = on_fatal
        self._state_listeners: dict[str, list[asyncio.Queue[str]]] = {}
        self._accepting = True
        self._started = 0
        self._failures = 0

    # ------------------------------------------------------------------ moving runs

    def deliver(
        self,
        run_id: str,
        message: Message | None = None,
        *,
        known: storage.RunRecord | None = None,
        resuming: bool = False,
        priority: int = 0,
    ) -> None:
        """Post ``message`` to the run's actor, starting one if the run has none.

        ``known`` is the run's record when the caller has just committed it (a new run).
        ``resuming`` marks a run that already started (recovery); one with a message is too.
        Both decide the run's place in the queue for a slot (``orchestrator.slots``).
        """
        actor = self._actors.get(run_id)
        if actor is not None:
            actor.post(message)
            return
        queued = self._queued.get(run_id)
        if queued is not None:
            if message is not None:
                queued.messages.append(message)
            return
        if not self._accepting:
            return  # shutting down: the delivery is durable and recovery picks it up
        messages = [] if message is None else [message]
        if self._slots.take():
            self._start(run_id, messages, known)
            return
        self._queued[run_id] = _Queued(known, messages)
        self._slots.queue(
            rank(resuming=resuming or message is not None,
                 priority=known.priority if known is not None else priority),
            run_id,
        )

    def _start(
        self, run_id: str, messages: list[Message], known: storage.RunRecord | None
    ) -> None:
        """Start the run's actor in a slot the caller holds."""
        actor = RunActor(self, run_id, known)
        self._actors[run_id] = actor
        for message in messages:
            actor.post(message)
        actor.task = asyncio.get_running_loop().create_task(
            self._supervise(actor), name=f"actor:{run_id}"
        )
        self._started += 1

    def _release_slot(self) -> None:
        run_id = self._slots.hand_over()
        if run_id is None:
            return
        queued = self._queued.pop(run_id)
        self._start(run_id, queued.messages, queued.known)

    async def cancel_run(self, run_id: str, reason: str | None, compensate: bool) -> None:
        self.deliver(run_id, Cancel(reason, compensate))

    async def _supervise(self, actor: RunActor) -> None:
        retry_later = False
        try:
            await actor.drive()
        except (HostFailure, storage.StorageError) as exc:
            cause = exc.cause if isinstance(exc, HostFailure) else exc
            if isinstance(cause, storage.StorageFull):
                # The step's result is not committed; it will run again (at-least-once).
                actor.log.warning("run.storage_full", error=str(cause))
                retry_later = True
            else:
                self._failures += 1
                actor.log.error("run.storage_error", error=repr(cause))
                self._on_fatal(cause)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the engine: keep the daemon up, log loudly
            self._failures += 1
            actor.log.exception("actor.crashed", error=repr(exc))
        finally:
            if self._actors.get(actor.run_id) is actor:
                del self._actors[actor.run_id]
            if self._accepting:
                self._release_slot()
            if actor.mailbox and self._accepting:
                # Deliveries that arrived after the actor stopped looking: pass them on.
                for message in actor.mailbox:
                    self.deliver(actor.run_id, message)
        if retry_later and self._accepting:
            asyncio.get_running_loop().call_later(
                STORAGE_RETRY_SECONDS, self.deliver, actor.run_id, None
            )

    @property
    def accepting(self) -> bool:
        return self._accepting

    def gate(self) -> None:
        """Called by every body before a new step: during shutdown, stop there."""
        if not self._accepting:
            raise Suspended()

    # ------------------------------------------------------------------ warm cache

    def take_warm(self, run_id: str) -> tuple[Execution, storage.RunRecord] | None:
        return self._warm.pop(run_id, None)

    def park(self, run_id: str, execution: Execution, run: storage.RunRecord) -> None:
        """Keep a parked execution (and its run record) warm, or close it when over budget."""
        if self._warm_budget <= 0:
            self._close_later(execution)
            return
        # Let go of the actor that drove it (its task, logger, mailbox): the next actor to
        # resume the run points the execution at itself.
        execution.host.record = _not_driven
        self._warm[run_id] = (execution, run)
        while len(self._warm) > self._warm_budget:
            _, (oldest, _record) = self._warm.popitem(last=False)
            self._close_later(oldest)

    def _close_later(self, execution: Execution) -> None:
        task = asyncio.get_running_loop().create_task(
            execution.close(), name=f"close:{execution.facts.run_id}"
        )
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    # ------------------------------------------------------------------ notifications

    def run_finished(self, run: storage.RunRecord) -> None:
        """The run's final record, as just committed by its actor."""
        self.publish_state(run.run_id, str(run.status))
        self._on_finished(run)

    def publish_state(self, run_id: str, status: str) -> None:
        for queue in self._state_listeners.get(run_id, ()):
            queue.put_nowait(status)

    def listen_state(self, run_id: str) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._state_listeners.setdefault(run_id, []).append(queue)
        return queue

    def unlisten_state(self, run_id: str, queue: asyncio.Queue[str]) -> None:
        listeners = self._state_listeners.get(run_id, [])
        if queue in listeners:
            listeners.remove(queue)
        if not listeners:
            self._state_listeners.pop(run_id, None)

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self, grace: float) -> None:
        """Stop starting actors, give running ones ``grace`` seconds, then cancel the rest."""
        self._accepting = False
        self._queued.clear()  # never started: their runs are durable and recovery starts them
        self._slots.clear()
        tasks = [a.task for a in self._actors.values() if a.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        warm = list(self._warm.values())
        self._warm.clear()
        for execution, _run in warm:
            await execution.close()
        if self._closers:
            await asyncio.wait(list(self._closers), timeout=5.0)

    def stats(self) -> SupervisorStats:
        return SupervisorStats(
            active_actors=len(self._actors),
            warm_runs=len(self._warm),
            slots_free=self._slots.free,
            runs_queued=self._slots.waiting,
            actors_started=self._started,
            actor_failures=self._failures,
        )

    def is_active(self, run_id: str) -> bool:
        return run_id in self._actors

    def is_live(self, run_id: str) -> bool:
        """True only if the run is certainly not terminal and its end is still to be announced
        (it has an actor that has not begun finishing, or it is parked warm). False says nothing."""
        actor = self._actors.get(run_id)
        if actor is not None:
            return not actor.finishing
        queued = self._queued.get(run_id)
        if queued is not None:
            return queued.known is not None  # a new run, just committed "pending"
        return run_id in self._warm

    def describe(self) -> dict[str, Any]:
        return self.stats().to_dict()


async def _not_driven(entry: Any) -> Any:
    raise RuntimeError("a parked execution recorded an entry with no actor driving it")
