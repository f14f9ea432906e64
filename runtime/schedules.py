"""Schedules (SPEC §2a): the ``Schedule`` option and the rules that say when one is due.

Pure functions of their arguments: no clock is read here. Times are float epoch seconds (UTC).

A *rule* is one of three kinds:

- ``cron``: a five-field cron expression (or an alias such as ``@daily``) evaluated in the
  schedule's time zone with croniter. Wall times are matched in local time, then placed on the
  UTC line so that a fixed-hour schedule fires exactly once per local day across DST changes: a
  local time that does not exist (spring forward) fires at the transition instant, a repeated
  one (fall back) on its first occurrence only.
- ``every``: a fixed interval on a grid anchored where the schedule was registered (its first
  due time is one interval after that).
- ``at``: one instant.

``jitter`` delays each fire by a deterministic amount in ``[0, jitter)``, a hash of the
schedule's name and the due time, so every daemon and every restart computes the same fire time
while the run id keeps the due time.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runtime import durations, errors
from runtime.serialization import round_trip

Overlap = Literal["skip", "buffer_one", "buffer_all", "cancel_other", "allow"]
OVERLAPS: tuple[str, ...] = ("skip", "buffer_one", "buffer_all", "cancel_other", "allow")
RuleKind = Literal["cron", "every", "at"]

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# croniter's non-standard "H" (hashed) and "R" (random) fields would make due times depend on
# something other than the expression: refused.
_NON_DETERMINISTIC = re.compile(r"(^|[,/(\-])[HR]($|[,/()\-])", re.IGNORECASE)
# Candidate local times that are not after the reference instant: at most those of one
# repeated hour (fall back) plus one skipped range (spring forward), a few hundred at most.
_MAX_CANDIDATES = 10_000
# Past this many missed due times in one outage, the rest are counted from their average spacing.
MAX_EXACT_MISSED = 10_000
NAME_PATTERN = re.compile(r"^[^\s\x00-\x1f\x7f]{1,200}$")


class ScheduleError(ValueError):
    """A bad schedule option; ``option`` names it (``cron``, ``every``, ``at``, ``timezone``,
    ``overlap``, ``jitter``, ``input``, ``name``)."""

    def __init__(self, where: str, option: str, value: Any, expected: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{where}.{option}: {expected}, got {shown}")
        self.option = option
        self.value = value
        self.expected = expected


@dataclass(frozen=True, slots=True)
class Schedule:
    """Start the workflow on a rule: exactly one of ``cron``, ``every`` or ``at``.

    ``timezone`` (an IANA name) is where ``cron`` and a naive ``at`` are read; ``input`` is the
    runs' input (JSON); ``overlap`` says what a fire does while the previous fire's run has not
    ended (``skip``, ``buffer_one``, ``buffer_all``, ``cancel_other``, ``allow``); ``name``
    defaults to the workflow id (``<id>#<n>`` for the n-th of a list); ``jitter`` delays each
    fire by a deterministic amount below it. Checked when ``@workflow`` registers it.
    """

    cron: str | None = None
    every: durations.Duration | None = None
    at: datetime | str | float | None = None
    _: KW_ONLY
    timezone: str = "UTC"
    input: Any = None
    overlap: Overlap = "skip"
    name: str | None = None
    jitter: durations.Duration | None = None

    def spec(self, where: str) -> ScheduleSpec:
        """The checked, stored form; a bad value raises :class:`ScheduleError` naming it."""
        return make_spec(
            where, cron=self.cron, every=self.every, at=self.at, timezone=self.timezone,
            input=self.input, overlap=self.overlap, jitter=self.jitter,
        )


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A checked schedule: its rule, time zone, input, overlap policy and jitter (seconds)."""

    kind: RuleKind
    cron: str | None
    every: float | None
    at: float | None
    timezone: str
    input: Any
    overlap: Overlap
    jitter: float

    def to_json(self) -> dict[str, Any]:
        """What storage keeps (``schedules.spec``)."""
        return {
            "cron": self.cron, "every": self.every, "at": self.at, "timezone": self.timezone,
            "input": self.input, "overlap": self.overlap, "jitter": self.jitter,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ScheduleSpec:
        """Read a stored spec back (checked again: a corrupt row fails loudly)."""
        return make_spec(
            "stored schedule", cron=value.get("cron"), every=value.get("every"),
            at=value.get("at"), timezone=value.get("timezone") or "UTC",
            input=value.get("input"), overlap=value.get("overlap") or "skip",
            jitter=value.get("jitter") or None,
        )

    def same_rule(self, other: ScheduleSpec) -> bool:
        """Same due times (input, overlap and jitter aside)."""
        return (self.kind, self.cron, self.every, self.at, self.timezone) == (
            other.kind, other.cron, other.every, other.at, other.timezone)

    def describe(self) -> str:
        """``cron 0 3 * * *``, ``every 3600s``, ``at 2026-12-24T18:00:00Z``."""
        if self.kind == "cron":
            return f"cron {self.cron}"
        if self.kind == "every":
            return f"every {_seconds_text(self.every or 0.0)}"
        return f"at {iso(self.at or 0.0)}"

    # ------------------------------------------------------------------ due times

    def first_due(self, registered_at: float) -> float | None:
        """The first due time of a schedule registered at ``registered_at``: ``every`` one
        interval later (from the next whole second), ``cron`` its next match, ``at`` its
        instant unless already past (then None: it never fires)."""
        if self.kind == "every":
            assert self.every is not None
            return math.ceil(registered_at) + self.every
        if self.kind == "at":
            assert self.at is not None
            return self.at if self.at > registered_at else None
        return self.next_due(registered_at)

    def next_due(self, after: float) -> float | None:
        """The first due time strictly after ``after``; None when there is none (``at``).
        For ``every`` the grid is anchored on ``after`` itself (a due time)."""
        if self.kind == "cron":
            assert self.cron is not None
            return next_fire(self.cron, self.timezone, after)
        if self.kind == "every":
            assert self.every is not None
            return after + self.every
        return None

    def due_after(self, anchor: float | None, after: float) -> float | None:
        """The first due time strictly after ``after``, on the grid through ``anchor`` (a due
        time of this schedule, for ``every``). Used on resume: fires while paused are gone."""
        if self.kind == "cron":
            return self.next_due(after)
        if self.kind == "at":
            assert self.at is not None
            return self.at if self.at > after else None
        assert self.every is not None
        if anchor is None:
            return math.ceil(after) + self.every
        steps = math.floor((after - anchor) / self.every) + 1
        due = anchor + steps * self.every
        while due <= after:  # float rounding
            due += self.every
        return due

    def due_between(self, anchor: float | None, start: float, end: float) -> Iterator[float]:
        """Every due time in ``[start, end]``, in order (backfill)."""
        if self.kind == "at":
            assert self.at is not None
            if start <= self.at <= end:
                yield self.at
            return
        due = self.due_after(anchor, start - 1e-6) if self.kind == "every" else (
            self.next_due(start - 1e-6))
        while due is not None and due <= end:
            yield due
            due = self.next_due(due)

    def fire_at(self, name: str, due: float) -> float:
        """When the fire for ``due`` happens: ``due`` plus its jitter."""
        return due + jitter_for(name, due, self.jitter)

    def collapse(self, name: str, first_due: float, now: float) -> tuple[float, int]:
        """Fires missed while nothing ran collapse into one: the latest due time from
        ``first_due`` on whose fire time has come by ``now``, and how many earlier due times
        it replaces (exact up to :data:`MAX_EXACT_MISSED`, estimated past it)."""
        due, missed = first_due, 0
        if self.kind == "every":
            assert self.every is not None
            # Arithmetic, not a walk: a one-second schedule down for a month is 2.6M steps.
            steps = max(0, math.floor((now - first_due) / self.every) - 1)
            due, missed = first_due + steps * self.every, steps
        while True:
            nxt = self.next_due(due)
            if nxt is None or self.fire_at(name, nxt) > now:
                return due, missed
            due, missed = nxt, missed + 1
            if missed >= MAX_EXACT_MISSED and self.kind == "cron":
                return self._collapse_far(name, first_due, due, missed, now)

    def _collapse_far(
        self, name: str, first_due: float, due: float, missed: int, now: float
    ) -> tuple[float, int]:
        # A cron fires at most once a minute, so the last due time before now is within a day
        # of now (plus the jitter): walk from there, and count the gap from the average spacing.
        spacing = (due - first_due) / missed
        restart = max(due, now - 86_400 - self.jitter)
        skipped = int((restart - due) / spacing) if spacing > 0 else 0
        walk = self.next_due(restart)
        while walk is not None and self.fire_at(name, walk) <= now:
            due, missed = walk, missed + 1
            walk = self.next_due(walk)
        return due, missed + skipped


def make_spec(
    where: str,
    *,
    cron: Any = None,
    every: Any = None,
    at: Any = None,
    timezone: Any = "UTC",
    input: Any = None,
    overlap: Any = "skip",
    jitter: Any = None,
) -> ScheduleSpec:
    """Check every option of a schedule; :class:`ScheduleError` names the first bad one."""
    given = [n for n, v in (("cron", cron), ("every", every), ("at", at)) if v is not None]
    if len(given) != 1:
        raise ScheduleError(where, given[1] if len(given) > 1 else "cron", given or None,
                            "exactly one of cron=, every=, at=")
    if not isinstance(timezone, str) or not timezone:
        raise ScheduleError(where, "timezone", timezone, "an IANA time zone name")
    zone = _zone(where, timezone)
    if overlap not in OVERLAPS:
        raise ScheduleError(where, "overlap", overlap, f"one of {', '.join(OVERLAPS)}")
    jitter_s = 0.0
    if jitter is not None:
        try:
            jitter_s = durations.to_seconds(jitter)
        except ValueError:
            raise ScheduleError(where, "jitter", jitter,
                                "a duration that is not negative") from None
    try:
        input = round_trip(input, what=f"{where}.input")
    except errors.FatalError as exc:  # NOT_SERIALIZABLE
        raise ScheduleError(where, "input", input, f"a JSON value ({exc})") from None
    every_s = at_s = None
    if cron is not None:
        cron = check_cron(where, cron, timezone)
    elif every is not None:
        try:
            every_s = durations.to_seconds(every)
        except ValueError:
            every_s = -1.0
        if every_s <= 0:
            raise ScheduleError(where, "every", every, "a positive duration")
    else:
        at_s = _instant(where, at, zone)
    kind: RuleKind = "cron" if cron is not None else "every" if every is not None else "at"
    return ScheduleSpec(kind, cron, every_s, at_s, timezone, input, overlap, jitter_s)


def check_name(where: str, name: Any) -> str:
    """A schedule name: 1 to 200 characters, no whitespace or control characters."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ScheduleError(where, "name", name,
                            "1 to 200 characters without whitespace or control characters")
    return name


def default_name(workflow_id: str, index: int | None) -> str:
    """The workflow id, or ``<id>#<n>`` (from 1) for the n-th schedule of a list."""
    return workflow_id if index is None else f"{workflow_id}#{index + 1}"


# ------------------------------------------------------------------ cron


def check_cron(where: str, expr: Any, timezone: str = "UTC") -> str:
    """A five-field cron expression (or ``@daily``-style alias) that fires at least once."""
    from croniter import croniter  # imported lazily: only schedules need it

    if not isinstance(expr, str) or not expr.strip():
        raise ScheduleError(where, "cron", expr, "a cron expression such as '0 3 * * *'")
    text = " ".join(expr.split())
    fields = _ALIASES.get(text.lower(), text).split(" ")
    if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
        raise ScheduleError(where, "cron", expr,
                            "a five-field cron expression such as '0 3 * * *'")
    if any(_NON_DETERMINISTIC.search(f) for f in fields):
        raise ScheduleError(where, "cron", expr, "a cron expression without H or R fields")
    try:
        # Any fixed start will do: a cron's matches repeat with the 400-year Gregorian cycle.
        next_fire(text, timezone, datetime(2000, 1, 1, tzinfo=UTC).timestamp())
    except ValueError:
        raise ScheduleError(where, "cron", expr,
                            "a cron expression that fires (this one never does)") from None
    return text


def next_fire(expr: str, timezone: str, after: float) -> float:
    """The first instant strictly after ``after`` at which ``expr`` fires in ``timezone``.

    Matching is done on naive local wall time; each match is placed on the UTC line: a wall
    time in a DST gap at the transition instant, an ambiguous one at its first occurrence.
    Raises ``ValueError`` when the expression never fires.
    """
    from croniter import CroniterBadDateError, croniter

    zone = _zone("cron", timezone)
    local = datetime.fromtimestamp(after, zone).replace(tzinfo=None)
    try:
        it = croniter(_ALIASES.get(expr.lower(), expr), local)
        for _ in range(_MAX_CANDIDATES):
            instant = local_to_utc(it.get_next(datetime), zone)
            if instant > after:
                return instant
    except CroniterBadDateError as exc:
        raise ValueError(f"cron {expr!r} never fires") from exc
    raise ValueError(f"cron {expr!r} found no time after {iso(after)}")


def local_to_utc(wall: datetime, zone: ZoneInfo) -> float:
    """Epoch seconds of naive local ``wall`` in ``zone``: its first occurrence when it is
    repeated, the transition instant when it does not exist."""
    first = wall.replace(tzinfo=zone, fold=0)
    instant = first.timestamp()
    if datetime.fromtimestamp(instant, zone).replace(tzinfo=None) == wall:
        return instant
    # In a gap: fold=1 reads it with the offset after the change (an instant before the
    # transition), fold=0 with the one before (an instant after it). Bisect to the change.
    lo = math.floor(wall.replace(tzinfo=zone, fold=1).timestamp())
    hi = math.ceil(instant)
    before = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return float(hi)


# ------------------------------------------------------------------ helpers


def jitter_for(name: str, due: float, jitter: float) -> float:
    """A delay in ``[0, jitter)`` that depends only on the schedule's name and the due time."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.sha256(f"{name}\x1f{iso(due)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * jitter


def iso(at: float) -> str:
    """ISO-8601 UTC, to the second (``2026-11-25T03:00:00Z``) or the millisecond when it has
    a fraction (``...T03:00:00.250Z``): the due-time part of a schedule's run ids."""
    moment = datetime.fromtimestamp(round(at, 3), UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    ms = moment.microsecond // 1000
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


def run_id(name: str, due: float) -> str:
    """``sched:<name>:<due ISO-8601 UTC>``: one run per due time, whoever fires it."""
    return f"sched:{name}:{iso(due)}"


def _seconds_text(seconds: float) -> str:
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _zone(where: str, name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)  # cached by zoneinfo itself
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(where, "timezone", name, "a known IANA time zone name") from None


def _instant(where: str, at: Any, zone: ZoneInfo) -> float:
    """``at`` as epoch seconds: an aware datetime as is, a naive one (or a naive ISO string) in
    the schedule's zone, a number as epoch seconds."""
    if isinstance(at, bool):
        raise ScheduleError(where, "at", at, "a datetime, an ISO-8601 time or epoch seconds")
    if isinstance(at, int | float):
        if not math.isfinite(at):
            raise ScheduleError(where, "at", at, "a finite time")
        return float(at)
    moment = at
    if isinstance(at, str):
        try:
            moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if not isinstance(moment, datetime):
        raise ScheduleError(where, "at", at, "a datetime, an ISO-8601 time or epoch seconds")
    if moment.tzinfo is None:
        return local_to_utc(moment, zone)
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class Declared:
    """A schedule declared in code: its name and checked spec."""

    name: str
    spec: ScheduleSpec


def declare(workflow_id: str, value: Any) -> tuple[Declared, ...]:
    """Check ``@workflow(schedule=...)``: one :class:`Schedule` or a list of them. Every bad
    value is a :class:`ScheduleError` naming the workflow, the option and the value."""
    where = f"workflow {workflow_id!r}"
    if value is None:
        return ()
    single = isinstance(value, Schedule)
    items = (value,) if single else value
    if isinstance(items, str | bytes | dict) or not hasattr(items, "__iter__"):
        raise ScheduleError(where, "schedule", value, "a Schedule or a list of them")
    found: list[Declared] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        at = f"{where}: schedule" if single else f"{where}: schedule[{i}]"
        if not isinstance(item, Schedule):
            raise ScheduleError(where, "schedule" if single else f"schedule[{i}]", item,
                                "a Schedule")
        name = default_name(workflow_id, None if single else i)
        if item.name is not None:
            name = check_name(at, item.name)
        if name in seen:
            raise ScheduleError(at, "name", name, "a name no other schedule of it has")
        seen.add(name)
        found.append(Declared(name, item.spec(at)))
    return tuple(found)


__all__ = [
    "OVERLAPS",
    "Declared",
    "Schedule",
    "ScheduleError",
    "ScheduleSpec",
    "check_cron",
    "check_name",
    "declare",
    "default_name",
    "iso",
    "jitter_for",
    "local_to_utc",
    "make_spec",
    "next_fire",
    "run_id",
]
