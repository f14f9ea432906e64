"""Schedule options and rules (SPEC §2a): checked at registration, cron across DST, every, at,
jitter and the collapse of missed fires. Pure: no clock is read, every time is given."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import Schedule, workflow
from runtime.schedules import (
    ScheduleSpec,
    iso,
    jitter_for,
    local_to_utc,
    make_spec,
    next_fire,
    run_id,
)
from runtime.workflow import REGISTRY, Registry, WorkflowDefinition, definition_of


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fires(expr: str, zone: str, start: str, n: int) -> list[str]:
    out, t = [], at(start)
    for _ in range(n):
        t = next_fire(expr, zone, t)
        out.append(iso(t))
    return out


# --- checked at registration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option", "shown"),
    [
        ({"cron": "0 3 * * *", "every": "1h"}, "every", "every"),
        ({}, "cron", "exactly one"),
        ({"cron": "0 0 30 2 *"}, "cron", "'0 0 30 2 *'"),
        ({"cron": "0 0 31 4 *"}, "cron", "never does"),
        ({"cron": "every tuesday"}, "cron", "'every tuesday'"),
        ({"cron": "0 3 * * * *"}, "cron", "five-field"),
        ({"cron": "H 3 * * *"}, "cron", "'H 3 * * *'"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "timezone", "'Mars/Olympus'"),
        ({"cron": "0 3 * * *", "overlap": "queue"}, "overlap", "'queue'"),
        ({"cron": "0 3 * * *", "jitter": -5}, "jitter", "-5"),
        ({"cron": "0 3 * * *", "jitter": "soon"}, "jitter", "'soon'"),
        ({"cron": "0 3 * * *", "input": {"when": datetime(2026, 1, 1)}}, "input", "datetime"),
        ({"cron": "0 3 * * *", "input": {1, 2}}, "input", "set"),
        ({"every": 0}, "every", "positive"),
        ({"every": "-1s"}, "every", "'-1s'"),
        ({"at": "someday"}, "at", "'someday'"),
        ({"cron": "0 3 * * *", "name": "has space"}, "name", "'has space'"),
    ],
)
def test_a_bad_schedule_is_refused_at_registration_naming_workflow_option_and_value(
    options: dict[str, Any], option: str, shown: str
) -> None:
    with pytest.raises(ValueError) as info:
        workflow(id="sched-bad", schedule=Schedule(**options))
    message = str(info.value)
    assert "'sched-bad'" in message and f".{option}" in message and shown in message


@pytest.fixture
def scratch_ids() -> Iterator[None]:
    # These workflows carry live schedules: left in the process-wide registry, every later
    # embedded engine in this pytest process would arm their timers.
    yield
    for wf_id in ("sched-names-one", "sched-names-list"):
        REGISTRY.unregister(wf_id)


@pytest.mark.usefixtures("scratch_ids")
def test_schedule_names_default_to_the_workflow_id_and_number_a_list_from_one() -> None:
    @workflow(id="sched-names-one", schedule=Schedule(cron="0 3 * * *"))
    async def one(input: Any, ctx: Any) -> None: ...

    @workflow(id="sched-names-list",
              schedule=[Schedule(every="1h"), Schedule(every="2h", name="custom"),
                        Schedule(at="2030-01-01T00:00:00Z")])
    async def many(input: Any, ctx: Any) -> None: ...

    assert [s.name for s in definition_of(one).schedules] == ["sched-names-one"]
    assert [s.name for s in definition_of(many).schedules] == [
        "sched-names-list#1", "custom", "sched-names-list#3"]


def test_a_schedule_name_has_one_owner() -> None:
    with pytest.raises(ValueError, match="'twice'"):
        workflow(id="sched-dup", schedule=[Schedule(every=1, name="twice"),
                                           Schedule(every=2, name="twice")])
    registry = Registry()

    def define(wf_id: str) -> WorkflowDefinition:
        async def body(input: Any, ctx: Any) -> None: ...
        from runtime.schedules import declare
        return WorkflowDefinition(id=wf_id, fn=body, version="1", origin=wf_id,
                                  schedules=declare(wf_id, Schedule(every=1, name="shared")))

    registry.register(define("a"))
    with pytest.raises(ValueError, match="'shared' is already used by workflow 'a'"):
        registry.register(define("b"))


def test_at_reads_a_naive_time_in_the_schedules_zone() -> None:
    spec = make_spec("s", at="2026-07-01T09:00:00", timezone="Europe/Paris")
    assert spec.at == at("2026-07-01T07:00:00Z")
    assert make_spec("s", at=datetime(2026, 7, 1, 9, tzinfo=UTC)).at == at("2026-07-01T09:00Z")
    assert spec.first_due(at("2026-07-01T06:00:00Z")) == spec.at
    assert spec.first_due(at("2026-07-01T08:00:00Z")) is None  # already past: never fires
    assert spec.next_due(spec.at or 0) is None  # fires once


def test_run_ids_carry_the_due_time_in_utc() -> None:
    assert run_id("nightly", at("2026-03-29T01:00:00Z")) == "sched:nightly:2026-03-29T01:00:00Z"
    assert run_id("fast", at("2026-03-29T01:00:00Z") + 0.25) == (
        "sched:fast:2026-03-29T01:00:00.250Z")


# --- cron across DST (explicit days) -------------------------------------------------------------


def test_paris_spring_forward_fires_a_missing_time_at_the_transition() -> None:
    # 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC); 02:30 does not exist that day.
    assert fires("30 2 * * *", "Europe/Paris", "2026-03-27T12:00:00Z", 3) == [
        "2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    # Hourly: 02:00 and 03:00 land on the same instant and fire once.
    assert fires("0 * * * *", "Europe/Paris", "2026-03-28T23:30:00Z", 3) == [
        "2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"]


def test_paris_fall_back_fires_a_repeated_time_on_its_first_occurrence_only() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice (00:30 and 01:30 UTC).
    assert fires("30 2 * * *", "Europe/Paris", "2026-10-23T12:00:00Z", 3) == [
        "2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    # Asked again from inside the repeated hour, it does not fire a second time that day.
    assert iso(next_fire("30 2 * * *", "Europe/Paris", at("2026-10-25T01:15:00Z"))) == (
        "2026-10-26T01:30:00Z")


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
    assert fires("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3) == [
        "2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
    # 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 EDT (05:30 UTC) fires, 01:30 EST not.
    assert fires("30 1 * * *", "America/New_York", "2026-10-31T00:00:00Z", 3) == [
        "2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]


# --- properties -----------------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe",
         "America/Santiago", "Asia/Tehran", "Europe/London", "America/St_Johns"]
instants = st.floats(min_value=at("2015-01-01T00:00:00Z"), max_value=at("2035-01-01T00:00:00Z"))
CRONS = ["0 3 * * *", "30 2 * * *", "*/15 * * * *", "0 * * * *", "5 4 * * 1-5", "0 0 1 * *",
         "59 23 * * *", "0 0 29 2 *", "@daily", "0 12 * * 0"]


@settings(max_examples=150, deadline=None)
@given(expr=st.sampled_from(CRONS), zone=st.sampled_from(ZONES), t=instants,
       frac=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_next_fire_is_after_and_nothing_fires_in_between(
    expr: str, zone: str, t: float, frac: float
) -> None:
    n = next_fire(expr, zone, t)
    assert n > t
    # Any instant before n asks for the same next fire: no due time was skipped.
    probe = max(t, min(t + (n - t) * frac, n - 0.001))
    assert next_fire(expr, zone, probe) == n


@settings(max_examples=150, deadline=None)
@given(zone=st.sampled_from(ZONES), hour=st.integers(0, 23), minute=st.integers(0, 59),
       t=instants)
def test_a_fixed_hour_schedule_fires_exactly_once_per_local_day(
    zone: str, hour: int, minute: int, t: float
) -> None:
    tz = ZoneInfo(zone)
    expr = f"{minute} {hour} * * *"
    moments = []
    for _ in range(8):
        t = next_fire(expr, zone, t)
        moments.append(t)
    days = [datetime.fromtimestamp(m, tz).date() for m in moments]
    assert days == [days[0] + timedelta(days=i) for i in range(8)]
    for m in moments:
        local = datetime.fromtimestamp(m, tz)
        if (local.hour, local.minute) != (hour, minute):
            # Only when that wall time did not exist that day: it fired at the transition.
            wall = datetime.combine(local.date(), datetime.min.time()).replace(
                hour=hour, minute=minute)
            assert local_to_utc(wall, tz) == m
            assert datetime.fromtimestamp(m - 1, tz).utcoffset() != local.utcoffset()


@settings(max_examples=100, deadline=None)
@given(every=st.sampled_from([1.0, 0.25, 60.0, 3600.0, 86_400.0]), anchor=instants,
       t=instants)
def test_every_stays_on_the_grid_of_its_anchor(every: float, anchor: float, t: float) -> None:
    spec = make_spec("s", every=every)
    due = spec.due_after(anchor, t)
    assert due is not None and t < due <= t + every + 1e-6
    k = (due - anchor) / every
    assert abs(k - round(k)) < 1e-6


@settings(max_examples=100, deadline=None)
@given(name=st.text(min_size=1, max_size=20), due=instants,
       jitter=st.floats(min_value=0.001, max_value=86_400))
def test_jitter_is_below_its_bound_and_the_same_for_the_same_fire(
    name: str, due: float, jitter: float
) -> None:
    j = jitter_for(name, due, jitter)
    assert 0 <= j < jitter
    assert jitter_for(name, due, jitter) == j
    assert jitter_for(name, due, 0) == 0


def _walk(spec: ScheduleSpec, name: str, first: float, now: float) -> tuple[float, int]:
    due, missed = first, 0
    while (nxt := spec.next_due(due)) is not None and spec.fire_at(name, nxt) <= now:
        due, missed = nxt, missed + 1
    return due, missed


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(["cron", "every"]), first=instants,
       span=st.floats(min_value=0, max_value=5 * 86_400),
       jitter=st.sampled_from([0.0, 30.0, 900.0]))
def test_collapse_takes_the_latest_due_time_that_came_and_counts_the_others(
    kind: str, first: float, span: float, jitter: float
) -> None:
    spec = make_spec("s", cron="*/30 * * * *", timezone="Europe/Paris", jitter=jitter) if (
        kind == "cron") else make_spec("s", every="45m", jitter=jitter)
    now = spec.fire_at("n", first) + span
    assert spec.collapse("n", first, now) == _walk(spec, "n", first, now)


def test_collapse_of_a_very_long_outage_stays_fast_and_lands_on_the_last_due_time() -> None:
    spec = make_spec("s", cron="* * * * *")
    first = at("2020-01-01T00:00:00Z")
    now = at("2021-01-01T00:00:30Z")  # a year of minutes: 527k due times
    due, missed = spec.collapse("n", first, now)
    assert iso(due) == "2021-01-01T00:00:00Z"
    assert abs(missed - 527_040) < 100  # exact up to 10k, estimated past it
    every = make_spec("s", every="1s")
    assert every.collapse("n", first, first + 2_592_000.5) == (first + 2_592_000, 2_592_000)


def test_backfill_due_times_include_both_bounds() -> None:
    spec = make_spec("s", cron="0 3 * * *")
    got = list(spec.due_between(None, at("2026-01-01T03:00:00Z"), at("2026-01-03T03:00:00Z")))
    assert [iso(d) for d in got] == [
        "2026-01-01T03:00:00Z", "2026-01-02T03:00:00Z", "2026-01-03T03:00:00Z"]
    every = make_spec("s", every="1h")
    anchor = at("2026-01-01T00:00:00Z")
    got = list(every.due_between(anchor, at("2026-01-01T05:00:00Z"), at("2026-01-01T07:00:00Z")))
    assert [iso(d) for d in got] == [
        "2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z"]


def test_a_cron_that_fires_rarely_is_accepted() -> None:
    assert make_spec("s", cron="0 0 29 2 *").kind == "cron"
    leap = next_fire("0 0 29 2 *", "UTC", at("2097-03-01T00:00:00Z"))
    assert datetime.fromtimestamp(leap, UTC).date() == date(2104, 2, 29)  # 2100 is no leap year
