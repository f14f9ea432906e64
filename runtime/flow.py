"""Flow-control options of ``@workflow`` (SPEC §2a): concurrency, throttle, debounce.

The option objects only describe; the engine enforces. They are checked when ``@workflow``
registers them (:meth:`check`), so an error names the workflow, the option and the value. A key
(``key=``) is a constant or a callable of the run's input; the engine calls it once, when the run
is submitted, and stores the result (:func:`resolve_key`), so restarts and replays never call it
again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from runtime import durations

Key = str | int | float | Callable[[Any], Any] | None
Strategy = Literal["queue", "cancel-in-progress", "cancel-newest"]
STRATEGIES: tuple[str, ...] = ("queue", "cancel-in-progress", "cancel-newest")
DebounceMode = Literal["trailing", "leading"]


class KeyResolutionError(ValueError):
    """A key callable raised, or returned something that is not a string or a number."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where = where


def _check_key(where: str, key: Any) -> None:
    if key is None or callable(key):
        return
    if isinstance(key, bool) or not isinstance(key, str | int | float):
        raise ValueError(
            f"{where}.key must be a string, a number or a callable of the input, got {key!r}"
        )


def _positive_int(where: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}.{name} must be an int >= 1, got {value!r}")


def _duration(where: str, name: str, value: Any, *, positive: bool = True) -> float:
    try:
        seconds = durations.to_seconds(value)
    except ValueError as exc:
        raise ValueError(f"{where}.{name}: {exc}") from None
    if positive and seconds <= 0:
        raise ValueError(f"{where}.{name} must be a positive duration, got {value!r}")
    return seconds


def resolve_key(key: Key, run_input: Any, where: str) -> str | None:
    """The stored form of a key for ``run_input``: ``None``, or a string (numbers as their
    JSON text). A callable that raises or returns a non-key → :class:`KeyResolutionError`."""
    if key is None:
        return None
    value = key
    if callable(key):
        try:
            value = key(run_input)
        except Exception as exc:
            detail = f"key callable raised {type(exc).__name__}: {exc}"
            raise KeyResolutionError(where, detail) from exc
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise KeyResolutionError(where, f"key {value!r} is not a JSON number")
        return orjson.dumps(value).decode()
    raise KeyResolutionError(where, f"key must be a string or a number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most ``limit`` runs of the group ``(scope, key)`` hold a slot at once. ``scope``
    defaults to the workflow id; a named scope is shared by every workflow declaring it."""

    limit: int
    key: Key = None
    strategy: Strategy = "queue"
    scope: str | None = None

    def check(self, where: str) -> None:
        _positive_int(where, "limit", self.limit)
        _check_key(where, self.key)
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"{where}.strategy must be one of {', '.join(map(repr, STRATEGIES))}, "
                f"got {self.strategy!r}"
            )
        if self.scope is not None and (not isinstance(self.scope, str) or not self.scope):
            raise ValueError(f"{where}.scope must be a non-empty string, got {self.scope!r}")


@dataclass(frozen=True, slots=True)
class Throttle:
    """At most ``limit`` run starts per ``period`` per key (sliding window); ``burst`` of them
    at once (default ``limit``), the rest spaced ``period / limit`` apart."""

    limit: int
    period: durations.Duration
    key: Key = None
    burst: int | None = None

    def check(self, where: str) -> None:
        _positive_int(where, "limit", self.limit)
        _duration(where, "period", self.period)
        _check_key(where, self.key)
        if self.burst is not None:
            _positive_int(where, "burst", self.burst)
            if self.burst > self.limit:
                raise ValueError(
                    f"{where}.burst={self.burst} exceeds limit={self.limit}: at most "
                    "`limit` runs start per period"
                )

    @property
    def period_seconds(self) -> float:
        return durations.to_seconds(self.period)


@dataclass(frozen=True, slots=True)
class Debounce:
    """Submissions with the same key while the debounced run is still pending collapse into
    it: its start moves to the last submission + ``period``, never past the first + ``max_wait``.
    ``trailing`` keeps the last submission's input, ``leading`` the first."""

    period: durations.Duration
    key: Key = None
    max_wait: durations.Duration | None = None
    mode: DebounceMode = "trailing"

    def check(self, where: str) -> None:
        period = _duration(where, "period", self.period)
        _check_key(where, self.key)
        if self.max_wait is not None:
            max_wait = _duration(where, "max_wait", self.max_wait)
            if max_wait < period:
                raise ValueError(
                    f"{where}.max_wait={self.max_wait!r} is shorter than period={self.period!r}"
                )
        if self.mode not in ("trailing", "leading"):
            raise ValueError(f"{where}.mode must be 'trailing' or 'leading', got {self.mode!r}")

    @property
    def period_seconds(self) -> float:
        return durations.to_seconds(self.period)

    @property
    def max_wait_seconds(self) -> float | None:
        return None if self.max_wait is None else durations.to_seconds(self.max_wait)


# --- triggers and cancel rules (SPEC §2a, second half) --------------------------------------------


def _check_event_type(where: str, event_type: Any) -> None:
    if not isinstance(event_type, str) or not event_type or event_type == "*":
        raise ValueError(f"{where}.type must be a non-empty event type, got {event_type!r}")
    if "*" in event_type[:-1]:
        raise ValueError(
            f"{where}.type may end with '*' (any suffix) and have no other '*', "
            f"got {event_type!r}"
        )


def type_matches(rule: str, event_type: str) -> bool:
    """``order.*`` matches any type starting with ``order.``; anything else matches itself."""
    if rule.endswith("*"):
        return event_type.startswith(rule[:-1])
    return rule == event_type


def _check_json_pattern(where: str, name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValueError(f"{where}.{name} must be a JSON object (dict), got {value!r}")
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise ValueError(f"{where}.{name} is not JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class Batch:
    """Matching events accumulate per key; one run starts with input ``{"events": [...]}``
    (oldest first) when ``max_size`` are in, or ``timeout`` after the first."""

    max_size: int
    timeout: durations.Duration
    key: Key = None

    def check(self, where: str) -> None:
        _positive_int(where, "max_size", self.max_size)
        _duration(where, "timeout", self.timeout)
        _check_key(where, self.key)

    @property
    def timeout_seconds(self) -> float:
        return durations.to_seconds(self.timeout)


@dataclass(frozen=True, slots=True)
class OnEvent:
    """A run starts for every event of ``type`` (``order.*``: any suffix) whose payload
    ``match`` is a deep subset of; its input is the payload, its id derived from the event's."""

    type: str
    match: dict[str, Any] | None = None
    batch: Batch | None = None

    def check(self, where: str) -> None:
        _check_event_type(where, self.type)
        _check_json_pattern(where, "match", self.match)
        if self.batch is not None:
            if not isinstance(self.batch, Batch):
                raise ValueError(f"{where}.batch must be a Batch, got {self.batch!r}")
            self.batch.check(f"{where}.batch")


@dataclass(frozen=True, slots=True)
class CancelOn:
    """An event of ``type`` cancels every non-terminal run of the workflow whose stored
    ``match`` (a JSON object, or a callable of the run's input called once at submit) is a
    deep subset of the event's payload (no match: every run)."""

    type: str
    match: dict[str, Any] | Callable[[Any], Any] | None = None
    compensate: bool = True

    def check(self, where: str) -> None:
        _check_event_type(where, self.type)
        if not callable(self.match):
            _check_json_pattern(where, "match", self.match)
        if not isinstance(self.compensate, bool):
            raise ValueError(f"{where}.compensate must be a bool, got {self.compensate!r}")

    def resolve(self, run_input: Any, where: str) -> dict[str, Any] | None:
        """The stored pattern for a run with ``run_input``."""
        if not callable(self.match):
            return self.match
        try:
            value = self.match(run_input)
        except Exception as exc:
            raise KeyResolutionError(
                where, f"match callable raised {type(exc).__name__}: {exc}"
            ) from exc
        if value is not None and not isinstance(value, dict):
            raise KeyResolutionError(where, f"match must be a JSON object, got {value!r}")
        try:
            orjson.dumps(value)
        except TypeError as exc:
            raise KeyResolutionError(where, f"match is not JSON: {exc}") from exc
        return value
