"""Events in (SPEC §2a, §6): ``send_event`` and its dry run, the recent events listing, and
the event triggers' batches.

An event is recorded in one transaction with everything it causes (``storage.RecordEvent``):
the waits it resolves, the runs its triggers start (ids derived from the event, so a re-sent
event starts nothing twice), the batches it joins and the cancels its rules request. A batch
starts its run when ``max_size`` events are in or ``timeout`` after its first
(``storage.FlushBatch``, idempotent); at start, batches that filled or timed out while the
daemon was down are flushed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import structlog

import storage
from orchestrator.api import errors, service
from orchestrator.api.service import JSONDict
from orchestrator.engine import bridge, triggers
from orchestrator.engine.flow.admission import Admission
from orchestrator.engine.messages import Resolve
from orchestrator.engine.new_runs import NewRuns
from orchestrator.engine.operations import RunOperations
from orchestrator.engine.supervisor import Supervisor
from runtime import matching
from runtime.clock import Clock
from runtime.flow import KeyResolutionError
from runtime.workflow import Registry

log = structlog.get_logger("wf")


class EventIntake:
    def __init__(
        self,
        storage_: storage.Storage,
        *,
        clock: Clock,
        registry: Registry,
        index: triggers.Triggers,
        new_runs: NewRuns,
        supervisor: Supervisor,
        admission: Admission,
        ops: RunOperations,
        timer_stored: Callable[[float], None],
        reached: Callable[[str], None],
    ) -> None:
        self._storage = storage_
        self._clock = clock
        self._registry = registry
        self._index = index
        self._new = new_runs
        self._supervisor = supervisor
        self._admission = admission
        self._ops = ops
        self._timer_stored = timer_stored
        self._reached = reached  # the engine's instrument, read at each passage

    async def send(self, r: service.SendEvent) -> JSONDict:
        """Record the event; in its transaction resolve the waits it matches, start the runs
        its triggers start, add it to its batches and request the cancels its rules ask."""
        self._new.check_size("payload", r.payload)
        event_id = r.event_id or f"evt_{secrets.token_hex(8)}"
        start: list[storage.CreateRun] = []
        batch: list[storage.BatchItem] = []
        for fired in self._index.fired_by(r.type, r.payload, matching.matches):
            definition = fired.definition
            if fired.rule.batch is not None:
                try:
                    key = triggers.batch_key(fired, r.payload)
                except KeyResolutionError as exc:
                    raise errors.ValidationFailed(definition.id, str(exc)) from exc
                batch.append(storage.BatchItem(definition.id, key,
                                               fired.rule.batch.timeout_seconds))
                continue
            run_input = self._new.accepted_input(definition, r.payload)
            start.append(self._new.op(
                definition, run_input, self._new.plan(definition, run_input),
                run_id=triggers.run_id_for_event(definition.id, fired.index, event_id),
                triggered_by="event",
            ))
        op = storage.RecordEvent(
            event_id=event_id,
            type=r.type,
            payload=r.payload,
            received_at=self._clock.now(),
            matches=matching.matches,
            start=tuple(start),
            batch=tuple(batch),
            cancel=self._index.cancel_rules,
        )
        result = await self._storage.record_event(op)
        self._reached("event.committed")
        if result.inserted:
            self._supervisor.tallies.events_received += 1
        for wp in result.resolved:
            self._supervisor.deliver(wp.run_id, Resolve(bridge.resolution(wp)))
        for run in result.started:
            log.info("run.submitted", run_id=run.run_id, workflow_id=run.workflow_id,
                     triggered_by="event", event_id=event_id)
            self.launch(run)
        for item in batch:  # after the commit: the batch's timer is stored now
            self._timer_stored(op.received_at + item.timeout)
        for workflow_id, key, waiting in result.batched:
            self.batch_joined(workflow_id, key, waiting)
        cancelled = 0
        for match in result.cancel:
            if match.run.cancel_requested is not None and not match.run.is_terminal:
                await self._ops.honour_cancel(match.run)
                cancelled += 1
        log.info("event.received", event_type=r.type, event_id=event_id,
                 resolved=len(result.resolved), started=len(result.started),
                 cancelled=cancelled, duplicate=not result.inserted)
        return {"event_id": event_id, "resolved": len(result.resolved),
                "started": [run.run_id for run in result.started], "cancelled": cancelled}

    async def dry_run(self, r: service.SendEvent) -> JSONDict:
        """What ``send_event`` would do now, read without a write: the waiting waitpoints it
        would resolve (the same match as ``RecordEvent``'s) and the runs its triggers would
        start. Cancel rules are not evaluated."""
        self._new.check_size("payload", r.payload)
        waiting = await self._storage.waiting_waitpoints_for_event(r.type)
        resolve = [{"run_id": wp.run_id, "waitpoint_id": wp.wp_id} for wp in waiting
                   if wp.match is None or matching.matches(wp.match, r.payload)]
        start: list[JSONDict] = []
        batch: list[str] = []
        for fired in self._index.fired_by(r.type, r.payload, matching.matches):
            if fired.rule.batch is not None:
                batch.append(fired.definition.id)
                continue
            run_id = triggers.run_id_for_event(fired.definition.id, fired.index,
                                               r.event_id or "<new id>")
            start.append({"workflow_id": fired.definition.id, "run_id": run_id})
        duplicate = (r.event_id is not None
                     and await self._storage.get_event(r.event_id) is not None)
        if duplicate:  # a re-sent event id is a no-op
            resolve, start, batch = [], [], []
        return {"dry_run": True, "duplicate": duplicate, "would_resolve": resolve,
                "would_start": start, "would_batch": batch}

    async def recent(self, r: service.Events) -> JSONDict:
        before = None if r.before is None else float(r.before)
        found = await self._storage.recent_events(type=r.type, before=before, limit=r.limit + 1)
        more = len(found) > r.limit
        found = found[: r.limit]
        resolved = await self._storage.event_resolutions([e.event_id for e in found])
        # Triggered runs have ids derived from their event (``triggers.run_id_for_event``):
        # the registered triggers name the candidates, storage says which exist.
        candidates = {
            e.event_id: [triggers.run_id_for_event(f.definition.id, f.index, e.event_id)
                         for f in self._index.fired_by(e.type, e.payload, matching.matches)
                         if f.rule.batch is None]
            for e in found
        }
        existing = await self._storage.existing_runs(
            [run_id for ids in candidates.values() for run_id in ids])
        events = [{
            "event_id": e.event_id, "type": e.type, "payload": e.payload,
            "received_at": e.received_at,
            "resolved": [{"run_id": run_id, "waitpoint_id": wp_id}
                         for run_id, wp_id in resolved.get(e.event_id, ())],
            "started": [run_id for run_id in candidates[e.event_id] if run_id in existing],
        } for e in found]
        return {"events": events,
                "next_before": found[-1].received_at if more and found else None}

    def launch(self, run: storage.RunRecord) -> None:
        """A new run committed by someone other than ``submit`` (a trigger, a batch, a
        schedule): admission starts it now, or when it is due."""
        if run.expires_at is not None:
            self._timer_stored(run.expires_at)
        self._supervisor.publish_state(run.run_id, "pending", run.workflow_id)
        self._admission.admit_new(run)

    # ------------------------------------------------------------------ batches

    def batch_joined(self, workflow_id: str, key: str, waiting: int) -> None:
        definition = self._registry.get(workflow_id)
        rule = None if definition is None else triggers.batch_rule(definition, key)
        if rule is not None and rule.batch is not None and waiting >= rule.batch.max_size:
            self._admission.spawn(self.flush_batch(workflow_id, key, timed_out=False))

    async def flush_batch(self, workflow_id: str, key: str, *, timed_out: bool) -> None:
        """Start the batch's runs: one per ``max_size`` events, and with ``timed_out`` one for
        what is left. Idempotent (the run id is derived from the batch's first event)."""
        definition = self._registry.get(workflow_id)
        rule = None if definition is None else triggers.batch_rule(definition, key)
        if definition is None or rule is None or rule.batch is None:
            log.warning("batch.orphaned", workflow_id=workflow_id, batch_key=key)
            return
        while True:
            pending = await self._storage.pending_batches(workflow_id, key)
            events = pending[0].events if pending else ()
            if events:  # the batch's timer is due its first event's received_at + timeout
                self._timer_stored(events[0].received_at + rule.batch.timeout_seconds)
            elif timed_out:  # taken by a full batch already: the timer's lease ends here
                await self._storage.execute(
                    storage.DeleteTimer(storage.ops.batch_timer_id(workflow_id, key)))
            if not events or (len(events) < rule.batch.max_size and not timed_out):
                return
            taken = events[: rule.batch.max_size]
            run_input = {"events": [e.payload for e in taken]}
            op = self._new.op(
                definition, run_input, self._new.plan(definition, run_input),
                run_id=triggers.run_id_for_batch(workflow_id, key, taken[0].event_id),
                triggered_by="event",
            )
            created = await self._storage.execute(storage.FlushBatch(
                workflow_id, key, tuple(e.event_id for e in taken), op,
                rule.batch.timeout_seconds,
            ))
            if created.created:
                log.info("run.submitted", run_id=op.run_id, workflow_id=workflow_id,
                         triggered_by="event", batch_size=len(taken))
                self.launch(created.run)
            if len(taken) < rule.batch.max_size:
                return

    async def flush_full_batches(self) -> None:
        """At start: batches that filled up, or whose timeout passed, before the daemon
        stopped start their runs now (a timer leased by a firing that never committed would
        otherwise wait out its lease)."""
        now = self._clock.now()
        for batch in await self._storage.pending_batches():
            definition = self._registry.get(batch.workflow_id)
            rule = None if definition is None else triggers.batch_rule(definition, batch.batch_key)
            if rule is None or rule.batch is None:
                continue
            due = batch.events[0].received_at + rule.batch.timeout_seconds
            if due <= now:
                self._admission.spawn(
                    self.flush_batch(batch.workflow_id, batch.batch_key, timed_out=True))
            else:
                self.batch_joined(batch.workflow_id, batch.batch_key, len(batch.events))
