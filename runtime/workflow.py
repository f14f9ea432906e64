"""The ``@workflow`` decorator, workflow options and the process-wide registry."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from runtime import durations
from runtime.flow import CancelOn, Concurrency, Debounce, OnEvent, Throttle
from runtime.retry import RetryPolicy
from runtime.schedules import Declared, declare
from runtime.schedules import (
    Schedule as Schedule,  # re-exported: `from runtime.workflow import Schedule`
)

WorkflowFn = Callable[[Any, Any], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    id: str
    fn: WorkflowFn
    version: str
    retry: RetryPolicy | None = None
    timeout: float | None = None
    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    debounce: Debounce | None = None
    start_timeout: float | None = None
    on_event: tuple[OnEvent, ...] = ()
    cancel_on: tuple[CancelOn, ...] = ()
    schedules: tuple[Declared, ...] = ()
    """The schedules declared in code, named and checked (``runtime.schedules``)."""
    tags: tuple[str, ...] = ()
    description: str | None = None
    input_validator: Callable[[Any], Any] | None = None
    origin: str = field(default="", compare=False)
    pinned: bool = False
    """``version=`` was given: runs started on this version resume only on it (SPEC §14).
    The source-hash default never pins."""


class Registry:
    """Workflow definitions by id; registering an id twice is an error naming both places,
    unless every registration names its own explicit ``version=`` (side-by-side versions: the
    newest is the id's current definition, the others serve the runs pinned to them)."""

    def __init__(self) -> None:
        self._by_id: dict[str, WorkflowDefinition] = {}
        self._versions: dict[str, dict[str, WorkflowDefinition]] = {}

    def register(self, definition: WorkflowDefinition) -> None:
        existing = self._by_id.get(definition.id)
        if existing is not None and existing.origin != definition.origin:
            side_by_side = (existing.pinned and definition.pinned
                            and definition.version not in self._versions.get(definition.id, {}))
            if not side_by_side:
                raise ValueError(
                    f"workflow id {definition.id!r} registered twice: "
                    f"at {existing.origin} and at {definition.origin}"
                    + (" (side-by-side versions each need their own explicit version=)"
                       if existing.pinned or definition.pinned else "")
                )
        self._check_schedule_names(definition)
        if definition.pinned:
            versions = self._versions.setdefault(definition.id, {})
            versions[definition.version] = definition
            newest = max(versions, key=version_key)
            self._by_id[definition.id] = versions[newest]
        else:
            self._versions.pop(definition.id, None)
            self._by_id[definition.id] = definition

    def get_version(self, workflow_id: str, version: str) -> WorkflowDefinition | None:
        """The definition registered for ``version`` of ``workflow_id`` (explicit or not)."""
        found = self._versions.get(workflow_id, {}).get(version)
        if found is not None:
            return found
        current = self._by_id.get(workflow_id)
        return current if current is not None and current.version == version else None

    def versions(self, workflow_id: str) -> list[str]:
        """The registered versions of ``workflow_id``, oldest first."""
        explicit = self._versions.get(workflow_id)
        if explicit:
            return sorted(explicit, key=version_key)
        current = self._by_id.get(workflow_id)
        return [] if current is None else [current.version]

    def _check_schedule_names(self, definition: WorkflowDefinition) -> None:
        # A schedule's name is its identity in storage and in its runs' ids: one owner only.
        if not definition.schedules:
            return
        for other in self._by_id.values():
            if other.id == definition.id:
                continue
            taken = {s.name for s in other.schedules} & {s.name for s in definition.schedules}
            if taken:
                raise ValueError(
                    f"workflow {definition.id!r}: schedule name {sorted(taken)[0]!r} is "
                    f"already used by workflow {other.id!r} (at {other.origin})"
                )

    def get(self, workflow_id: str) -> WorkflowDefinition | None:
        return self._by_id.get(workflow_id)

    def unregister(self, workflow_id: str) -> None:
        self._by_id.pop(workflow_id, None)
        self._versions.pop(workflow_id, None)

    def __iter__(self) -> Iterator[WorkflowDefinition]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)


REGISTRY = Registry()


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order of version strings: ``"2" < "10"``, ``"1.9" < "1.10"``."""
    import re

    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.findall(r"\d+|[^\d]+", version))


def _origin(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    where = f"{code.co_filename}:{code.co_firstlineno}" if code else "?"
    return f"{fn.__module__}.{fn.__qualname__} ({where})"


def _source_version(fn: Callable[..., Any]) -> str:
    try:
        source = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        source = code.co_code if code else repr(fn).encode()
    return hashlib.sha256(source).hexdigest()[:12]


def workflow(
    id: str,
    *,
    version: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: durations.Duration | None = None,
    concurrency: Concurrency | Sequence[Concurrency] | None = None,
    throttle: Throttle | None = None,
    debounce: Debounce | None = None,
    start_timeout: durations.Duration | None = None,
    on_event: OnEvent | Sequence[OnEvent] | None = None,
    cancel_on: CancelOn | Sequence[CancelOn] | None = None,
    schedule: Schedule | Sequence[Schedule] | None = None,
    tags: Sequence[str] = (),
    description: str | None = None,
    input_validator: Callable[[Any], Any] | None = None,
) -> Callable[[F], F]:
    """Register ``async def body(input, ctx)`` as workflow ``id``; returns the function unchanged.

    The definition is reachable as ``body.__workflow__`` and through :data:`REGISTRY`. Every
    option is checked here: a bad one is a ``ValueError`` naming the workflow, the option and
    the value (SPEC §2a: no option is accepted and ignored).
    """
    if not isinstance(id, str) or not id:
        raise ValueError(f"workflow id must be a non-empty string, got {id!r}")
    where = f"workflow {id!r}"
    if version is not None and (not isinstance(version, str) or not version):
        raise ValueError(f"{where}: version must be a non-empty string, got {version!r}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ValueError(f"{where}: retry must be a RetryPolicy, got {retry!r}")
    timeout_s = _seconds(where, "timeout", timeout)
    limits = _concurrency(id, concurrency)
    if throttle is not None:
        if not isinstance(throttle, Throttle):
            raise ValueError(f"{where}: throttle must be a Throttle, got {throttle!r}")
        throttle.check(f"{where}: throttle")
    if debounce is not None:
        if not isinstance(debounce, Debounce):
            raise ValueError(f"{where}: debounce must be a Debounce, got {debounce!r}")
        debounce.check(f"{where}: debounce")
    start_timeout_s = _seconds(where, "start_timeout", start_timeout)
    if start_timeout_s is not None and start_timeout_s <= 0:
        raise ValueError(f"{where}: start_timeout must be positive, got {start_timeout!r}")
    triggers = _options(where, "on_event", OnEvent, on_event)
    cancels = _options(where, "cancel_on", CancelOn, cancel_on)
    schedules = declare(id, schedule)

    def decorate(fn: F) -> F:
        is_async = inspect.iscoroutinefunction(fn)  # kept out of the `if`: it would narrow F
        if not is_async:
            raise ValueError(f"workflow {id!r}: {fn.__qualname__} must be an 'async def' function")
        definition = WorkflowDefinition(
            id=id,
            fn=fn,
            version=version or _source_version(fn),
            retry=retry,
            timeout=timeout_s,
            concurrency=limits,
            throttle=throttle,
            debounce=debounce,
            start_timeout=start_timeout_s,
            on_event=triggers,
            cancel_on=cancels,
            schedules=schedules,
            tags=tuple(tags),
            description=description or (inspect.getdoc(fn) or None),
            input_validator=input_validator,
            origin=_origin(fn),
            pinned=version is not None,
        )
        REGISTRY.register(definition)
        fn.__workflow__ = definition  # type: ignore[attr-defined]  # handle for ctx.invoke
        return fn

    return decorate


def _seconds(where: str, option: str, value: durations.Duration | None) -> float | None:
    if value is None:
        return None
    try:
        return durations.to_seconds(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {option}: {exc}") from None


def _options(where: str, option: str, kind: type[Any], value: Any) -> tuple[Any, ...]:
    """One option object or a list of them, each checked."""
    if value is None:
        return ()
    items = (value,) if isinstance(value, kind) else value
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise ValueError(f"{where}: {option} must be a {kind.__name__} or a list, got {value!r}")
    out = tuple(items)
    for i, item in enumerate(out):
        if not isinstance(item, kind):
            raise ValueError(f"{where}: {option}[{i}] must be a {kind.__name__}, got {item!r}")
        item.check(f"{where}: {option}[{i}]")
    return out


def _concurrency(
    workflow_id: str, value: Concurrency | Sequence[Concurrency] | None
) -> tuple[Concurrency, ...]:
    where = f"workflow {workflow_id!r}"
    if value is None:
        return ()
    items = (value,) if isinstance(value, Concurrency) else value
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise ValueError(
            f"{where}: concurrency must be a Concurrency or a list of them, got {value!r}"
        )
    limits = tuple(items)
    seen: dict[tuple[str, bool], int] = {}
    for i, limit in enumerate(limits):
        if not isinstance(limit, Concurrency):
            raise ValueError(f"{where}: concurrency[{i}] must be a Concurrency, got {limit!r}")
        limit.check(f"{where}: concurrency[{i}]")
        # Groups are (scope, key): two keyed (or two unkeyed) limits in one scope would share
        # their groups' names. A second one needs a scope of its own.
        kind = (limit.scope or workflow_id, limit.key is None)
        if kind in seen:
            raise ValueError(
                f"{where}: concurrency[{i}] has the same scope as concurrency[{seen[kind]}] "
                f"({kind[0]!r}, {'un' if limit.key is None else ''}"
                "keyed); give it a scope= of its own"
            )
        seen[kind] = i
    return limits


def definition_of(wf: Any) -> WorkflowDefinition:
    """The definition behind a decorated function, a definition, or a registered id."""
    if isinstance(wf, WorkflowDefinition):
        return wf
    found = getattr(wf, "__workflow__", None)
    if isinstance(found, WorkflowDefinition):
        return found
    if isinstance(wf, str):
        definition = REGISTRY.get(wf)
        if definition is not None:
            return definition
        raise LookupError(f"no workflow registered with id {wf!r}")
    raise TypeError(f"expected a @workflow function or a workflow id, got {wf!r}")
