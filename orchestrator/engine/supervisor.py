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
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import structlog

import storage
from orchestrator.engine.actor import RunActor
from orchestrator.engine.changes import ChangeFeed
from orchestrator.engine.flow.plan import Plan, group_name
from orchestrator.engine.holds import Holds
from orchestrator.engine.messages import Cancel, Message
from orchestrator.engine.ports import FlowPort, RunTracing, TimerStored
from orchestrator.engine.settings import Settings
from orchestrator.engine.slots import SlotQueue, rank
from orchestrator.engine.streams import StreamHub
from orchestrator.engine.tallies import EngineTallies
from runtime._signals import HostFailure, Suspended
from runtime.clock import Clock
from runtime.executor import Execution
from runtime.facts import HostServices, ProcessRunner, RecordFn
from runtime.ratelimit import RateLimiter
from runtime.workflow import Registry
from storage.instruments import NO_INSTRUMENT, Instrument
from storage.records import RunRecord

log = structlog.get_logger("wf.supervisor")

# How long an actor whose storage write failed (disk full) waits before it tries again.
STORAGE_RETRY_SECONDS = 1.0


@dataclass(slots=True)
class _Queued:
    known: RunRecord | None
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
    """Owns every actor; implements :class:`~orchestrator.engine.ports.RunHost` for them."""

    def __init__(
        self,
        *,
        storage_: storage.Storage,
        registry: Registry,
        clock: Clock,
        settings: Settings,
        rate_limiter: RateLimiter,
        thread_pool: Executor | None,
        process_runner: ProcessRunner | None,
        timer_stored: TimerStored,
        on_finished: Callable[[RunRecord], None],
        flow: FlowPort,
        holds: Holds | None = None,
        on_held_back: Callable[[RunRecord], None] | None = None,
        on_cancel_child: Callable[[RunRecord, Cancel], None] | None = None,
        instrument: Instrument = NO_INSTRUMENT,
    ) -> None:
        self._flow = flow
        self.holds = holds if holds is not None else Holds()
        self._on_held_back = on_held_back
        self._on_cancel_child = on_cancel_child
        self._storage = storage_
        self._registry = registry
        self._clock = clock
        self._limits = settings.limits
        self._rate_limiter = rate_limiter
        self._thread_pool = thread_pool
        self._process_runner = process_runner
        self.timer_stored: TimerStored = timer_stored
        self._instrument = instrument
        self.streams = StreamHub()
        self.changes = ChangeFeed(clock)
        self._slots = SlotQueue(settings.max_active_runs)
        # Runs waiting for a slot: what to start them with (no actor or task exists for them).
        self._queued: dict[str, _Queued] = {}
        self._warm_budget = settings.warm_runs
        self._actors: dict[str, RunActor] = {}
        self._warm: OrderedDict[str, tuple[Execution, RunRecord]] = OrderedDict()
        # Every task the supervisor starts besides actors (closers, storage retries): kept.
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._on_finished = on_finished
        self.tallies = EngineTallies()  # what /metrics reads: steps, timer lag, events
        self.tracing: RunTracing | None = None  # set by the composition root when [telemetry] on
        self._state_listeners: dict[str, list[asyncio.Queue[str]]] = {}
        self._accepting = True
        self._started = 0
        self._failures = 0
        # Many daemons (SPEC §13): this daemon's id once the engine runs in a cluster. An actor
        # then first claims its run and stands down if another daemon drives it.
        self.owner: str | None = None
        self._owned: set[str] = set()

    # ------------------------------------------------------------------ RunHost

    @property
    def storage(self) -> storage.Storage:
        return self._storage

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def registry(self) -> Registry:
        return self._registry

    def services(self, run: RunRecord, record: RecordFn) -> HostServices:
        run_id = run.run_id
        tracing = self.tracing
        return HostServices(
            record=record,
            clock=self._clock,
            rate_limiter=self._rate_limiter,
            process_runner=self._process_runner,
            thread_pool=self._thread_pool,
            publish=self.streams.publish_for(run_id),
            gate=functools.partial(self._gate, run_id),
            limits=self._limits,
            step_scope=None if tracing is None else functools.partial(tracing.step_scope, run),
        )

    def admit(self, run: RunRecord) -> None:
        self._flow.admit_new(run)

    async def concurrency_deadlock(self, parent: RunRecord, plan: Plan) -> str | None:
        chain = [parent.run_id]
        ancestor_id = parent.parent_run_id
        while ancestor_id is not None and len(chain) < 1000:
            chain.append(ancestor_id)
            ancestor = await self._storage.get_run(ancestor_id)
            ancestor_id = ancestor.parent_run_id if ancestor is not None else None
        group = await self._flow.deadlock(chain, plan)
        return None if group is None else group_name(group)

    # ------------------------------------------------------------------ moving runs

    def deliver(
        self,
        run_id: str,
        message: Message | None = None,
        *,
        known: RunRecord | None = None,
        resuming: bool = False,
        priority: int = 0,
    ) -> None:
        """Post ``message`` to the run's actor, starting one if the run has none.

        ``known`` is the run's record when the caller has just committed it (a new run).
        ``resuming`` marks a run that already started (recovery); one with a message is too.
        Both decide the run's place in the queue for a slot (``orchestrator.slots``).
        """
        if self.holds.is_paused(run_id) and not isinstance(message, Cancel):
            # Paused: a resolution is recorded already and acted on at resume; nothing starts
            # the run meanwhile (a cancel still goes through).
            if message is not None:
                self.holds.keep(run_id, message)
            elif known is not None and run_id not in self._actors and run_id not in self._queued:
                self.held_back(known)  # admission let a run start as it was being paused
            return
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
        self, run_id: str, messages: list[Message], known: RunRecord | None
    ) -> None:
        """Start the run's actor in a slot the caller holds."""
        actor = RunActor(self, run_id, known, self._instrument)
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

    async def _supervise(self, actor: RunActor) -> None:
        """Run the actor; whatever goes wrong in it fails its run only (SPEC §3: no engine
        error leaves a run running or waiting), never the daemon."""
        retry_later = False
        try:
            if not await self._own(actor):
                return
            await actor.drive()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # user code can raise anything
            cause = exc.cause if isinstance(exc, HostFailure) else exc
            if isinstance(cause, storage.RunNotOwned):
                # Another daemon drives the run now (SPEC §13): nothing of ours was written;
                # drop the actor and what we kept of the run, and leave it to its owner.
                actor.log.warning("run.owned_elsewhere", detail=str(cause))
                self._owned.discard(actor.run_id)
                warm = self._warm.pop(actor.run_id, None)
                if warm is not None:
                    self._close_later(warm[0])
                actor.mailbox.clear()
            elif isinstance(cause, storage.StorageFull | storage.StorageBusy):
                # Nothing of it was committed; the run goes on from its journal shortly (a
                # step whose result was lost runs again: at-least-once).
                actor.log.warning("run.storage_unavailable", error=str(cause))
                retry_later = True
            elif self._storage.failed.done():
                # The writer stopped after an I/O error: the daemon fail-stops, and recovery
                # reads only what reached the disk. Nothing more may be written for the run.
                actor.log.error("run.storage_error", error=repr(cause))
            else:
                self._failures += 1
                actor.log.error("run.internal_error", error=repr(cause),
                                error_type=type(cause).__name__)
                await self._fail_internal(actor, cause)
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
            self._spawn(self._deliver_later(actor.run_id), f"retry:{actor.run_id}")

    async def _own(self, actor: RunActor) -> bool:
        """Whether this daemon may drive the actor's run: always with one daemon; in a cluster
        only once it owns the run (claimed now if nobody does). A run another daemon owns is
        left to it: what was delivered here is recorded, and its owner's poll finds it."""
        if self.owner is None or actor.run_id in self._owned:
            return True
        epoch = await self._storage.execute(storage.ClaimRun(self.owner, actor.run_id))
        if epoch is None:
            actor.log.debug("run.owned_elsewhere")
            actor.mailbox.clear()
            return False
        actor.log.debug("run.claimed", epoch=epoch)  # which way an actor came to own its run
        self._owned.add(actor.run_id)
        return True

    def owns(self, run_id: str) -> None:
        """Record a run this daemon claimed in bulk (a takeover) or admitted."""
        log.debug("run.owned", run_id=run_id)
        self._owned.add(run_id)

    def drives(self, run_id: str) -> bool:
        """This daemon drives the run: always with one daemon; in a cluster, once claimed."""
        return self.owner is None or run_id in self._owned

    def disown(self, run_id: str) -> None:
        """This daemon does not drive the run any more (queued for admission across daemons,
        which may let it start elsewhere): an actor for it claims it first again."""
        self._owned.discard(run_id)

    async def _fail_internal(self, actor: RunActor, cause: BaseException) -> None:
        try:
            await actor.fail_internal(cause)
        except Exception as exc:  # storage refused even that: recovery will see it running
            actor.log.error("run.internal_error_unrecorded", error=repr(exc))

    async def _deliver_later(self, run_id: str) -> None:
        await asyncio.sleep(STORAGE_RETRY_SECONDS)
        if self._accepting:
            self.deliver(run_id)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def _gate(self, run_id: str) -> Awaitable[None] | None:
        """Called by every body before a new step: during shutdown, stop there; while the run
        is paused, hold it there (its actor commits ``paused``) until it is resumed."""
        if not self._accepting:
            raise Suspended()
        if not self.holds.is_paused(run_id):
            return None
        actor = self._actors.get(run_id)
        return None if actor is None else actor.held()

    # ------------------------------------------------------------------ pauses

    def paused(self, run_id: str) -> bool:
        return self.holds.is_paused(run_id)

    def hold(self, run_id: str) -> None:
        self.holds.pause(run_id)

    def holds_start(self, run: RunRecord) -> bool:
        return self.holds.blocks_start(run) is not None

    def held_back(self, run: RunRecord) -> None:
        """A pending run was not started because of a pause: admission keeps it pending."""
        if self._on_held_back is not None:
            self._on_held_back(run)

    def cancel_child(self, child: RunRecord, cancel: Cancel) -> None:
        """A child of a cancelled run, its cancel already requested in storage: carry it out."""
        if self._on_cancel_child is not None:
            self._on_cancel_child(child, cancel)
        else:
            self.deliver(child.run_id, cancel)

    def has_actor(self, run_id: str) -> bool:
        return run_id in self._actors

    def resume_held(self, run_id: str, kept: list[Message]) -> None:
        """The run's pause was lifted (in ``holds`` and storage): move it again. A run held
        mid-body by its actor goes on there; any other gets an actor (warm or replayed)."""
        actor = self._actors.get(run_id)
        for message in kept:
            self.deliver(run_id, message, resuming=True)
        if actor is not None:
            actor.release()
        elif not kept:
            self.deliver(run_id, resuming=True)

    # ------------------------------------------------------------------ warm cache

    def take_warm(self, run_id: str) -> tuple[Execution, RunRecord] | None:
        return self._warm.pop(run_id, None)

    def resume_from_journal(self, run_id: str) -> bool:
        """Resume a parked run of ours that another daemon resolved: its warm execution (if
        any) never saw that resolution, so it is dropped and the run replays its journal,
        which holds it. False while an actor drives the run (asked again at the next poll)."""
        if run_id in self._actors or run_id in self._queued:
            return False
        warm = self._warm.pop(run_id, None)
        if warm is not None:
            self._close_later(warm[0])
        self.deliver(run_id, resuming=True)
        return True

    def park(self, run_id: str, execution: Execution, run: RunRecord) -> None:
        """Keep a parked execution (and its run record) warm, or close it when over budget."""
        if self.tracing is not None:
            self.tracing.run_parked(run_id)
        if self._warm_budget <= 0:
            self._close_later(execution)
            return
        self._warm[run_id] = (execution, run)
        while len(self._warm) > self._warm_budget:
            _, (oldest, _record) = self._warm.popitem(last=False)
            self._close_later(oldest)

    def _close_later(self, execution: Execution) -> None:
        self._spawn(execution.close(), f"close:{execution.facts.run_id}")

    # ------------------------------------------------------------------ notifications

    def run_finished(self, run: RunRecord) -> None:
        """The run's final record, as just committed by its actor."""
        self._owned.discard(run.run_id)
        self.publish_state(run.run_id, str(run.status), run.workflow_id)
        if self.tracing is not None:
            self.tracing.run_ended(run.run_id)
        self._on_finished(run)

    def publish_state(self, run_id: str, status: str, workflow_id: str | None = None) -> None:
        """A status change of the run was committed: tell its watchers and the change feed."""
        self.changes.publish(run_id, status, workflow_id)
        for queue in self._state_listeners.get(run_id, ()):
            queue.put_nowait(status)
        self.streams.run_changed(run_id, status)

    def relay_state(self, run_id: str, status: str, workflow_id: str | None = None) -> None:
        """Another daemon committed and announced a status change of the run (SPEC §13): tell
        its watchers here and this daemon's change feed (not its metrics)."""
        self.changes.relay(run_id, status, workflow_id)
        for queue in self._state_listeners.get(run_id, ()):
            queue.put_nowait(status)
        self.streams.run_changed(run_id, status)

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
        for actor in self._actors.values():
            actor.abandon_hold()  # a run held by a pause stops at once: it stays paused
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
        if self._side_tasks:
            await asyncio.wait(list(self._side_tasks), timeout=5.0)

    def stats(self) -> SupervisorStats:
        return SupervisorStats(
            active_actors=len(self._actors),
            warm_runs=len(self._warm),
            slots_free=self._slots.free,
            runs_queued=self._slots.waiting,
            actors_started=self._started,
            actor_failures=self._failures,
        )

    def knows(self, run_id: str) -> bool:
        """The run was handed to the supervisor (it has an actor, waits for one, or is parked
        warm): it has started, whatever storage says yet."""
        return run_id in self._actors or run_id in self._queued or run_id in self._warm

    def is_live(self, run_id: str) -> bool:
        """True only if the run is certainly not terminal and its end is still to be announced
        here (it has an actor that has not begun finishing, or it is parked warm). False says
        nothing. In a cluster only a run this daemon drives: an actor still claiming a run may
        find another daemon drives it (and may have ended it already), so it says nothing."""
        if not self.drives(run_id):
            return False
        actor = self._actors.get(run_id)
        if actor is not None:
            return not actor.finishing
        queued = self._queued.get(run_id)
        if queued is not None:
            return queued.known is not None  # a new run, just committed "pending"
        return run_id in self._warm

    def describe(self) -> dict[str, Any]:
        return self.stats().to_dict()

