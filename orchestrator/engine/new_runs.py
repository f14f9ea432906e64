"""How a new run is made, whoever asks (submit, an event trigger, a batch, a fork): its input
checked by the workflow's validator and the payload limit, its flow plan, and its ``CreateRun``
with cancel rules, start and expiry decided now, once."""

from __future__ import annotations

from typing import Any

import orjson

import storage
from orchestrator.api import errors
from orchestrator.engine import triggers
from orchestrator.engine.flow.plan import Plan, plan_for
from runtime.clock import Clock
from runtime.flow import KeyResolutionError
from runtime.workflow import WorkflowDefinition


class NewRuns:
    def __init__(self, clock: Clock, max_payload_bytes: int) -> None:
        self._clock = clock
        self._max_payload_bytes = max_payload_bytes

    def check_size(self, field: str, value: Any) -> None:
        """``value`` encodes as JSON within ``limits.max_payload_bytes``, else ``field`` is
        refused."""
        limit = self._max_payload_bytes
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError as exc:  # e.g. nested deeper than JSON encoding allows
            raise errors.InvalidParams(
                field, "a JSON value nested at most 254 levels deep", str(exc)
            ) from exc
        if size > limit:
            raise errors.InvalidParams(
                field, f"JSON of at most {limit} bytes (limits.max_payload_bytes)", f"{size} bytes"
            )

    def accepted_input(self, definition: WorkflowDefinition, run_input: Any) -> Any:
        """The input as the workflow's validator returns it; ``VALIDATION`` if it refuses."""
        if definition.input_validator is not None:
            try:
                run_input = definition.input_validator(run_input)
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
                raise errors.ValidationFailed(definition.id, reason) from exc
        self.check_size("input", run_input)
        return run_input

    @staticmethod
    def plan(definition: WorkflowDefinition, run_input: Any) -> Plan:
        try:
            return plan_for(definition, run_input)
        except KeyResolutionError as exc:
            raise errors.ValidationFailed(definition.id, str(exc)) from exc

    def op(
        self,
        definition: WorkflowDefinition,
        run_input: Any,
        plan: Plan,
        *,
        run_id: str,
        triggered_by: str,
        tags: tuple[str, ...] = (),
        priority: int = 0,
        delay: float = 0.0,
        ttl: float | None = None,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
    ) -> storage.CreateRun:
        """The ``CreateRun`` of a new run of ``definition`` (submitted, triggered, batched or
        scheduled): its flow plan, cancel rules, start and expiry decided now, once."""
        now = self._clock.now()
        if definition.debounce is not None:
            delay = max(delay, definition.debounce.period_seconds)
        due = now + delay
        ttl = ttl if ttl is not None else definition.start_timeout
        try:
            cancel_on = triggers.cancel_rules(definition, run_input)
        except KeyResolutionError as exc:
            raise errors.ValidationFailed(definition.id, str(exc)) from exc
        return storage.CreateRun(
            run_id=run_id,
            workflow_id=definition.id,
            created_at=now,
            input=run_input,
            workflow_version=definition.version,
            version_pinned=definition.pinned,
            tags=tags or definition.tags,
            priority=priority,
            idempotency_key=idempotency_key,
            scheduled_at=due if delay else None,
            triggered_by=triggered_by,
            flow=plan.to_json(),
            throttle_key=plan.throttle,
            expires_at=due + ttl if ttl is not None else None,
            cancel_on=cancel_on,
            traceparent=traceparent,
        )
