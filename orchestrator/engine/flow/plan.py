"""What a run's flow-control options resolve to, decided once at submit and stored on the run.

A run's *plan* names its concurrency groups ``(scope, key)``, its throttle window and its
debounce key, with every key callable already called. Limits are not stored: they come from the
workflows registered now, so a deploy that lowers or raises a limit applies to runs already
queued (SPEC §2a). A named scope shared by several workflows takes the smallest limit declared
for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import storage
from runtime.flow import Concurrency, Strategy, resolve_key
from runtime.workflow import WorkflowDefinition

GroupId = tuple[str, str | None]
"""``(scope, key)``; ``key`` is None for an unkeyed limit."""

SEP = "\x1f"
SCHEDULE_SCOPE = "schedule:"


def schedule_group(name: str) -> GroupId:
    """The group every run of schedule ``name`` joins unless its overlap is ``allow``: limit 1,
    so buffered fires wait their turn in the gate like any queued run (no second queue)."""
    return (f"{SCHEDULE_SCOPE}{name}", None)


def group_name(group: GroupId) -> str:
    """How a group is shown (``wf show``, ``wf stats``, error messages)."""
    scope, key = group
    return scope if key is None else f"{scope}[{key}]"


@dataclass(frozen=True, slots=True)
class Plan:
    groups: tuple[GroupId, ...] = ()
    throttle: str | None = None
    """The throttle window's name: ``<workflow id>\\x1f<key>``."""
    debounce: str | None = None

    def to_json(self) -> dict[str, Any] | None:
        if not self.groups and self.throttle is None and self.debounce is None:
            return None
        return {
            "groups": [list(g) for g in self.groups],
            "throttle": self.throttle,
            "debounce": self.debounce,
        }

    @classmethod
    def from_json(cls, value: Any) -> Plan:
        if not isinstance(value, dict):
            return EMPTY
        groups = tuple((str(s), None if k is None else str(k)) for s, k in value.get("groups", ()))
        return cls(groups, value.get("throttle"), value.get("debounce"))


EMPTY = Plan()


def plan_for(definition: WorkflowDefinition, run_input: Any) -> Plan:
    """Call the key callables of ``definition``'s options on ``run_input``. A callable that
    raises or returns a non-key raises ``runtime.flow.KeyResolutionError`` naming the option."""
    where = f"workflow {definition.id!r}"
    groups = tuple(
        (c.scope or definition.id, resolve_key(c.key, run_input, f"{where}: concurrency[{i}]"))
        for i, c in enumerate(definition.concurrency)
    )
    throttle = None
    if definition.throttle is not None:
        key = resolve_key(definition.throttle.key, run_input, f"{where}: throttle")
        throttle = f"{definition.id}{SEP}{key or ''}"
    debounce = None
    if definition.debounce is not None:
        key = resolve_key(definition.debounce.key, run_input, f"{where}: debounce")
        debounce = key or ""
    return Plan(groups, throttle, debounce)


@dataclass(frozen=True, slots=True)
class Limit:
    limit: int
    strategy: Strategy


class Limits:
    """The limit of every group, from the workflows registered now."""

    def __init__(self, definitions: Iterable[WorkflowDefinition]) -> None:
        self._by_kind: dict[tuple[str, bool], int] = {}
        self._declared: dict[tuple[str, str, bool], Concurrency] = {}
        for definition in definitions:
            for c in definition.concurrency:
                kind = (c.scope or definition.id, c.key is not None)
                self._by_kind[kind] = min(self._by_kind.get(kind, c.limit), c.limit)
                self._declared[(definition.id, *kind)] = c

    def limit(self, group: GroupId) -> int | None:
        """The group's limit; None when no registered workflow declares it any more."""
        scope, key = group
        found = self._by_kind.get((scope, key is not None))
        if found is None and key is None and scope.startswith(SCHEDULE_SCOPE):
            return 1  # a schedule's own group (schedule_group): one of its runs at a time
        return found

    def rules(self, throttles: Iterable[tuple[str, storage.ThrottleRule]]) -> storage.FlowRules:
        """These limits (and ``throttles`` by workflow id) as data for storage's admission op."""
        return storage.FlowRules(
            limits=tuple((scope, keyed, limit) for (scope, keyed), limit in self._by_kind.items()),
            prefixes=((SCHEDULE_SCOPE, 1),),
            throttles=tuple(throttles),
            replacing=tuple(sorted(key for key, c in self._declared.items()
                                   if c.strategy == "cancel-in-progress")),
        )

    def strategy(self, workflow_id: str, group: GroupId) -> Strategy:
        """The strategy ``workflow_id`` declared for ``group`` (``queue`` if it declares none)."""
        scope, key = group
        declared = self._declared.get((workflow_id, scope, key is not None))
        return declared.strategy if declared is not None else "queue"
