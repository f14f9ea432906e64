"""Event triggers and cancel rules (SPEC §2a): which workflows an event starts or cancels.

The index is built once from the registered workflows. ``send_event`` asks it which triggers an
event fires; the runs are created in the event's own transaction (``storage.RecordEvent``), with
ids derived from ``(workflow, event id)`` so that re-sending an event never starts a second run.
A batch trigger's events accumulate in storage per ``(workflow, rule, key)`` until ``max_size``
are in or ``timeout`` after the first; then one run takes them (``storage.FlushBatch``).
Cancel rules are resolved once per run at submit and stored with it (``storage.CancelRule``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import storage
from runtime.flow import OnEvent, resolve_key, type_matches
from runtime.workflow import WorkflowDefinition

SEP = "\x1f"


@dataclass(frozen=True, slots=True)
class Fired:
    """One trigger an event fires: the workflow, its rule and the rule's index."""

    definition: WorkflowDefinition
    rule: OnEvent
    index: int

    @property
    def where(self) -> str:
        return f"workflow {self.definition.id!r}: on_event[{self.index}]"


class Triggers:
    def __init__(self, definitions: Iterable[WorkflowDefinition]) -> None:
        self._exact: dict[str, list[Fired]] = {}
        self._wildcards: list[Fired] = []
        self.cancel_rules = False
        for definition in definitions:
            self.cancel_rules = self.cancel_rules or bool(definition.cancel_on)
            for i, rule in enumerate(definition.on_event):
                fired = Fired(definition, rule, i)
                if rule.type.endswith("*"):
                    self._wildcards.append(fired)
                else:
                    self._exact.setdefault(rule.type, []).append(fired)

    def fired_by(self, event_type: str, payload: Any, matches: Any) -> list[Fired]:
        """The triggers an event of ``event_type`` with ``payload`` fires, in registration
        order (one workflow may fire several times, once per matching rule)."""
        candidates = [*self._exact.get(event_type, ()),
                      *(f for f in self._wildcards if type_matches(f.rule.type, event_type))]
        return [f for f in candidates if matches(f.rule.match, payload)]


def run_id_for_event(workflow_id: str, index: int, event_id: str) -> str:
    """A triggered run's id: derived from the event, so a re-sent event finds it."""
    suffix = f"#{index}" if index else ""
    return f"evt:{workflow_id}{suffix}:{event_id}"


def batch_key(fired: Fired, payload: Any) -> str:
    """The stored name of the batch an event joins: the rule's index and its key's value."""
    assert fired.rule.batch is not None
    key = resolve_key(fired.rule.batch.key, payload, f"{fired.where}.batch")
    return f"{fired.index}{SEP}{key or ''}"


def batch_rule(definition: WorkflowDefinition, stored_key: str) -> OnEvent | None:
    index = stored_key.split(SEP, 1)[0]
    if not index.isdigit() or int(index) >= len(definition.on_event):
        return None
    rule = definition.on_event[int(index)]
    return rule if rule.batch is not None else None


def run_id_for_batch(workflow_id: str, stored_key: str, first_event_id: str) -> str:
    index, _, key = stored_key.partition(SEP)
    return f"batch:{workflow_id}:{index}:{key}:{first_event_id}"


def cancel_rules(definition: WorkflowDefinition, run_input: Any) -> tuple[storage.CancelRule, ...]:
    """``definition``'s cancel rules for a run with ``run_input`` (match callables called now;
    ``runtime.flow.KeyResolutionError`` if one raises or returns a non-object)."""
    rules = []
    for i, rule in enumerate(definition.cancel_on):
        match = rule.resolve(run_input, f"workflow {definition.id!r}: cancel_on[{i}]")
        wildcard = rule.type.endswith("*")
        rules.append(storage.CancelRule(
            rule.type[:-1] if wildcard else rule.type, wildcard, match, rule.compensate
        ))
    return tuple(rules)
