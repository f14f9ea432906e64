"""Event triggers and cancel rules enforced by the engine (SPEC §2a second half, §4, §6): which
runs an event starts (``OnEvent``: match, wildcards, batches), which it cancels (``CancelOn``),
what ``send_event`` answers, and what survives a restart, over a real SQLite file.

Every test declares its workflows' options itself (:mod:`tests.orchestrator.trigger_workflows`).
A "crash" is an instrument that raises at a named point (the points the kill -9 campaign uses),
after which the engine is closed and a new one opened on the same file: what was committed
before the point is all the new engine has. Waits on timers are as short as the behaviour allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import storage
from orchestrator.api import errors
from orchestrator.engine.engine import Engine
from orchestrator.engine.settings import Settings
from runtime import workflow
from runtime.flow import Batch, CancelOn, Concurrency, OnEvent
from runtime.workflow import WorkflowDefinition
from storage.instruments import NO_INSTRUMENT, Instrument
from tests.orchestrator import trigger_workflows as tw
from tests.orchestrator.conftest import GRACE, reach, until

REACH_TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def _fresh_trigger_state() -> Iterator[None]:
    tw.reset()
    yield
    tw.reset()


class Crash(Exception):
    """Stands for a kill -9 at an instrument point."""


class CrashAt(Instrument):
    """Raises :class:`Crash` the first time execution passes ``point``."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.crashed = False

    def reached(self, point: str) -> None:
        if point == self.point and not self.crashed:
            self.crashed = True
            raise Crash(point)


class SlowEventCommits:
    """The real storage, whose ``record_event`` takes ``delay`` seconds longer (a slow fsync)."""

    def __init__(self, inner: storage.Storage, delay: float = 0.05) -> None:
        self.inner = inner
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def record_event(self, op: storage.RecordEvent) -> storage.EventRecorded:
        await asyncio.sleep(self.delay)
        return await self.inner.record_event(op)


@contextlib.asynccontextmanager
async def trigger_engine(
    db_path: Path,
    *definitions: WorkflowDefinition,
    instrument: Instrument = NO_INSTRUMENT,
    slow_events: bool = False,
) -> AsyncIterator[Engine]:
    """One engine life on ``db_path`` with exactly these workflows registered."""
    async with storage.SQLiteStorage.open(db_path) as opened, Engine(
        cast(storage.Storage, SlowEventCommits(opened)) if slow_events else opened,
        registry=tw.registry(*definitions),
        settings=Settings(shutdown_grace=GRACE),
        instrument=instrument,
    ) as engine:
        yield engine


async def reached(engine: Engine, run_id: str, *statuses: str) -> dict[str, Any]:
    """The run's record once its status is one of ``statuses``; fails after 5 s."""
    try:
        return await asyncio.wait_for(reach(engine, run_id, *statuses), REACH_TIMEOUT)
    except TimeoutError:
        got = (await engine.get(run_id))["status"]
        pytest.fail(f"run {run_id} is {got}, never reached {statuses}")


async def completed(engine: Engine, run_id: str) -> dict[str, Any]:
    run = await engine.wait(run_id, timeout=REACH_TIMEOUT)
    assert run["status"] == "completed", run
    return run


async def runs_of(engine: Engine, workflow_id: str) -> list[dict[str, Any]]:
    """The workflow's runs, oldest first."""
    runs: list[dict[str, Any]] = (await engine.list(workflow_id=workflow_id))["runs"]
    return sorted(runs, key=lambda r: (r["created_at"], r["number"]))


async def one_run_of(engine: Engine, workflow_id: str, timeout: float = REACH_TIMEOUT) -> Any:
    """The workflow's only run, once it exists."""
    await until(lambda: _count(engine, workflow_id, 1), f"a run of {workflow_id}", timeout)
    (run,) = await runs_of(engine, workflow_id)
    return run


async def _count(engine: Engine, workflow_id: str, n: int) -> bool:
    return len(await runs_of(engine, workflow_id)) >= n


def batch_inputs(runs: list[dict[str, Any]]) -> list[list[Any]]:
    return [r["input"]["events"] for r in runs]


# --- triggers: which runs an event starts ---------------------------------------------------------


async def test_event_starts_one_run_with_its_payload_as_input_triggered_by_event(
    db_path: Path,
) -> None:
    signup = tw.define("on-signup", tw.record, on_event=OnEvent("user.signed_up"))
    async with trigger_engine(db_path, signup) as engine:
        payload = {"user_id": "u1", "plan": {"tier": "pro"}}
        sent = await engine.send_event("user.signed_up", payload, event_id="e1")
        assert sent["event_id"] == "e1"
        assert (sent["resolved"], sent["cancelled"]) == (0, 0)
        (run_id,) = sent["started"]
        assert "on-signup" in run_id and "e1" in run_id  # derived from (workflow, event id)
        run = await completed(engine, run_id)
        assert run["input"] == payload
        assert run["output"] == payload
        assert run["triggered_by"] == "event"
        assert run["workflow_id"] == "on-signup"
    assert {run_id: payload} == tw.SEEN


async def test_resent_event_id_starts_nothing_more(db_path: Path) -> None:
    signup = tw.define("on-signup", tw.record, on_event=OnEvent("user.signed_up"))
    async with trigger_engine(db_path, signup) as engine:
        first = await engine.send_event("user.signed_up", {"user_id": "u1"}, event_id="e1")
        (run_id,) = first["started"]
        await completed(engine, run_id)
        again = await engine.send_event("user.signed_up", {"user_id": "u1"}, event_id="e1")
        # A no-op, as for waitpoints (resolved 0): nothing started, the first answer stands.
        assert again == {"event_id": "e1", "resolved": 0, "started": [], "cancelled": 0}
        assert [r["run_id"] for r in await runs_of(engine, "on-signup")] == [run_id]
        other = await engine.send_event("user.signed_up", {"user_id": "u1"}, event_id="e2")
        (second,) = other["started"]
        assert second != run_id  # another event id, another run
        await completed(engine, second)
    # Across a restart too: the derived run id finds the stored run.
    async with trigger_engine(db_path, signup) as engine:
        again = await engine.send_event("user.signed_up", {"user_id": "u1"}, event_id="e1")
        assert again["started"] == []
        assert len(await runs_of(engine, "on-signup")) == 2
    assert len(tw.SEEN) == 2


async def test_trigger_match_is_a_deep_subset_of_the_payload(db_path: Path) -> None:
    gold = tw.define("gold-orders", tw.record,
                     on_event=OnEvent("order.paid", match={"customer": {"tier": "gold"}}))
    async with trigger_engine(db_path, gold) as engine:
        fires = {
            "deeper": {"customer": {"tier": "gold", "id": 7}, "amount": 3},
            "exact": {"customer": {"tier": "gold"}},
        }
        misses = {
            "silver": {"customer": {"tier": "silver"}},
            "flat": {"tier": "gold"},
            "no-customer": {"amount": 3},
            "not-an-object": ["gold"],
            "customer-not-an-object": {"customer": "gold"},
        }
        for event_id, payload in {**fires, **misses}.items():
            sent = await engine.send_event("order.paid", payload, event_id=event_id)
            assert len(sent["started"]) == (1 if event_id in fires else 0), event_id
        for run in await runs_of(engine, "gold-orders"):
            await completed(engine, run["run_id"])
    assert sorted(tw.SEEN.values(), key=str) == sorted(fires.values(), key=str)


async def test_wildcard_type_matches_any_suffix_of_its_prefix_only(db_path: Path) -> None:
    orders = tw.define("any-order", tw.record, on_event=OnEvent("order.*"))
    async with trigger_engine(db_path, orders) as engine:
        started = {
            t: len((await engine.send_event(t, {"t": t}))["started"])
            for t in ("order.paid", "order.item.added", "order.", "orders.x", "order", "x.order.y")
        }
        assert started == {"order.paid": 1, "order.item.added": 1, "order.": 1,
                           "orders.x": 0, "order": 0, "x.order.y": 0}
        for run in await runs_of(engine, "any-order"):
            await completed(engine, run["run_id"])


async def test_one_event_starts_a_run_per_matching_trigger_of_every_workflow(
    db_path: Path,
) -> None:
    mailer = tw.define("mailer", tw.record, on_event=OnEvent("user.signed_up"))
    crm = tw.define("crm-sync", tw.record,
                    on_event=[OnEvent("user.*"), OnEvent("user.signed_up", match={"vip": True})])
    unrelated = tw.define("billing", tw.record, on_event=OnEvent("invoice.paid"))
    async with trigger_engine(db_path, mailer, crm, unrelated) as engine:
        sent = await engine.send_event("user.signed_up", {"vip": True}, event_id="e1")
        assert len(sent["started"]) == 3 == len(set(sent["started"]))
        for run_id in sent["started"]:
            await completed(engine, run_id)
        assert len(await runs_of(engine, "mailer")) == 1
        assert len(await runs_of(engine, "crm-sync")) == 2  # both of its rules fired
        assert await runs_of(engine, "billing") == []
        plain = await engine.send_event("user.signed_up", {"vip": False}, event_id="e2")
        assert len(plain["started"]) == 2  # crm-sync's second rule does not match
        for run_id in plain["started"]:
            await completed(engine, run_id)


async def test_triggered_runs_queue_behind_their_workflows_concurrency_limit(
    db_path: Path,
) -> None:
    one = tw.define("one-at-a-time", tw.held, on_event=OnEvent("job.created"),
                    concurrency=Concurrency(1))
    async with trigger_engine(db_path, one) as engine:
        (first,) = (await engine.send_event("job.created", {"n": 1}))["started"]
        await reached(engine, first, "waiting")
        (second,) = (await engine.send_event("job.created", {"n": 2}))["started"]
        queued = await engine.get(second)
        assert queued["status"] == "pending"
        assert queued["pending"]["concurrency"] == {
            "group": "one-at-a-time", "limit": 1, "holders": 1}
        assert [first] == tw.STARTED

        await engine.signal(first, "go", 1)
        await completed(engine, first)
        await reached(engine, second, "waiting")
        await engine.signal(second, "go", 2)
        await completed(engine, second)
    assert [first, second] == tw.STARTED


async def test_trigger_whose_validator_refuses_the_payload_stores_nothing(
    db_path: Path,
) -> None:
    def needs_email(payload: Any) -> Any:
        if "email" not in payload:
            raise ValueError("email is required")
        return payload

    strict = tw.define("strict", tw.record, on_event=OnEvent("user.signed_up"),
                       input_validator=needs_email)
    lenient = tw.define("lenient", tw.record, on_event=OnEvent("user.signed_up"))
    async with trigger_engine(db_path, strict, lenient) as engine:
        with pytest.raises(errors.ValidationFailed) as info:
            await engine.send_event("user.signed_up", {"user_id": "u1"}, event_id="e1")
        assert info.value.code == "VALIDATION"
        assert "strict" in str(info.value) and "email is required" in str(info.value)
        assert (await engine.stats())["events"] == 0  # not the event either
        assert await engine.storage.get_event("e1") is None
        assert (await engine.list())["runs"] == []  # nor the other workflow's run

        # The same event id, once valid, is a new event: nothing of the refusal remains.
        ok = await engine.send_event("user.signed_up", {"email": "a@b"}, event_id="e1")
        assert len(ok["started"]) == 2
        for run_id in ok["started"]:
            await completed(engine, run_id)


async def test_cancel_match_callable_that_raises_for_a_triggered_run_refuses_the_event(
    db_path: Path,
) -> None:
    fragile = tw.define("fragile", tw.record, on_event=OnEvent("user.signed_up"),
                        cancel_on=CancelOn("user.deleted", match=tw.broken_match))
    async with trigger_engine(db_path, fragile) as engine:
        with pytest.raises(errors.ValidationFailed) as info:
            await engine.send_event("user.signed_up", {"id": 1}, event_id="e1")
        assert "cancel_on[0]" in str(info.value)
        assert (await engine.stats())["events"] == 0
        assert (await engine.list())["runs"] == []


async def test_event_committed_before_a_crash_starts_its_triggered_run_after_restart(
    db_path: Path,
) -> None:
    signup = tw.define("on-signup", tw.record, on_event=OnEvent("user.signed_up"))
    crash = CrashAt("event.committed")
    async with trigger_engine(db_path, signup, instrument=crash) as engine:
        with pytest.raises(Crash):
            await engine.send_event("user.signed_up", {"user_id": "u1"}, event_id="e1")
        assert tw.SEEN == {}
    async with trigger_engine(db_path, signup) as engine:
        run = await one_run_of(engine, "on-signup")
        await completed(engine, run["run_id"])
        # The client's retry after the lost reply is a no-op.
        again = await engine.send_event("user.signed_up", {"user_id": "u1"}, event_id="e1")
        assert again["started"] == []
    assert list(tw.SEEN.values()) == [{"user_id": "u1"}]


# --- batches --------------------------------------------------------------------------------------


async def test_batch_starts_one_run_once_max_size_events_are_in_oldest_first(
    db_path: Path,
) -> None:
    clicks = tw.define("clicks", tw.record, on_event=OnEvent("page.clicked", batch=Batch(3, "1h")))
    async with trigger_engine(db_path, clicks) as engine:
        for i in range(2):
            sent = await engine.send_event("page.clicked", {"i": i})
            assert sent["started"] == []  # a batch's run is not an answer to one event
        await asyncio.sleep(0.05)
        assert await runs_of(engine, "clicks") == []
        await engine.send_event("page.clicked", {"i": 2})
        run = await one_run_of(engine, "clicks")
        assert run["input"] == {"events": [{"i": 0}, {"i": 1}, {"i": 2}]}
        assert run["triggered_by"] == "event"
        await completed(engine, run["run_id"])
        await engine.send_event("page.clicked", {"i": 3})  # a new batch begins
        await asyncio.sleep(0.05)
        assert len(await runs_of(engine, "clicks")) == 1


async def test_many_events_at_once_fill_batches_of_max_size_and_lose_none(
    db_path: Path,
) -> None:
    clicks = tw.define("clicks", tw.record, on_event=OnEvent("page.clicked", batch=Batch(4, "1h")))
    async with trigger_engine(db_path, clicks) as engine:
        await asyncio.gather(*(engine.send_event("page.clicked", {"i": i}) for i in range(20)))
        await until(lambda: _count(engine, "clicks", 5), "five batches")
        runs = await runs_of(engine, "clicks")
        for run in runs:
            await completed(engine, run["run_id"])
        batches = batch_inputs(runs)
        assert [len(b) for b in batches] == [4] * 5
        assert sorted(p["i"] for b in batches for p in b) == list(range(20))


async def test_batch_starts_timeout_after_its_first_event_with_what_is_in(db_path: Path) -> None:
    timeout = 0.5
    clicks = tw.define("clicks", tw.record,
                       on_event=OnEvent("page.clicked", batch=Batch(10, timeout)))
    async with trigger_engine(db_path, clicks) as engine:
        first_sent = time.time()
        await engine.send_event("page.clicked", {"i": 0})
        await asyncio.sleep(0.4)
        second_sent = time.time()
        await engine.send_event("page.clicked", {"i": 1})
        run = await one_run_of(engine, "clicks")
        assert run["input"] == {"events": [{"i": 0}, {"i": 1}]}
        # Due at the first event's time + timeout: not earlier, and not moved by the second.
        assert first_sent + timeout <= run["created_at"] < second_sent + timeout
        await completed(engine, run["run_id"])


async def test_batches_accumulate_per_key(db_path: Path) -> None:
    clicks = tw.define("clicks", tw.record, on_event=OnEvent(
        "page.clicked", batch=Batch(2, "1h", key=lambda p: p["page"])))
    async with trigger_engine(db_path, clicks) as engine:
        for page, n in [("home", 1), ("about", 1), ("home", 2)]:
            await engine.send_event("page.clicked", {"page": page, "n": n})
        run = await one_run_of(engine, "clicks")
        assert run["input"] == {"events": [{"page": "home", "n": 1}, {"page": "home", "n": 2}]}
        await completed(engine, run["run_id"])
        await engine.send_event("page.clicked", {"page": "about", "n": 2})
        await until(lambda: _count(engine, "clicks", 2), "the about batch")
        runs = await runs_of(engine, "clicks")
        assert runs[1]["input"] == {
            "events": [{"page": "about", "n": 1}, {"page": "about", "n": 2}]}
        await completed(engine, runs[1]["run_id"])


async def test_batch_key_callable_that_raises_refuses_the_event(db_path: Path) -> None:
    clicks = tw.define("clicks", tw.record, on_event=OnEvent(
        "page.clicked", batch=Batch(2, "1h", key=lambda p: p["page"])))
    async with trigger_engine(db_path, clicks) as engine:
        with pytest.raises(errors.ValidationFailed) as info:
            await engine.send_event("page.clicked", {"no-page": 1}, event_id="e1")
        assert "clicks" in str(info.value) and "batch" in str(info.value)
        assert (await engine.stats())["events"] == 0
        assert await engine.storage.pending_batches() == []


async def test_partial_batch_left_after_a_full_one_starts_at_its_own_timeout(
    db_path: Path,
) -> None:
    timeout = 0.6
    clicks = tw.define("clicks", tw.record,
                       on_event=OnEvent("page.clicked", batch=Batch(2, timeout)))
    async with trigger_engine(db_path, clicks) as engine:
        await engine.send_event("page.clicked", {"i": 0})
        await asyncio.sleep(0.4)
        left_sent = time.time()
        await engine.send_event("page.clicked", {"i": 1})  # fills the first batch
        await engine.send_event("page.clicked", {"i": 2})  # left over: a batch of its own
        await until(lambda: _count(engine, "clicks", 2), "the left-over batch", timeout=3)
        full, partial = await runs_of(engine, "clicks")
        assert batch_inputs([full, partial]) == [[{"i": 0}, {"i": 1}], [{"i": 2}]]
        # Not at the first batch's timeout (0.6 s after event 0): 0.6 s after event 2.
        assert partial["created_at"] >= left_sent + timeout
        await completed(engine, full["run_id"])
        await completed(engine, partial["run_id"])


async def test_resent_event_ids_count_once_in_a_batch(db_path: Path) -> None:
    clicks = tw.define("clicks", tw.record, on_event=OnEvent("page.clicked", batch=Batch(3, "1h")))
    async with trigger_engine(db_path, clicks) as engine:
        for event_id in ("e1", "e1", "e2", "e2", "e1"):
            await engine.send_event("page.clicked", {"id": event_id}, event_id=event_id)
        await asyncio.sleep(0.05)
        assert await runs_of(engine, "clicks") == []
        await engine.send_event("page.clicked", {"id": "e3"}, event_id="e3")
        run = await one_run_of(engine, "clicks")
        assert run["input"] == {"events": [{"id": "e1"}, {"id": "e2"}, {"id": "e3"}]}
        await completed(engine, run["run_id"])
        # Re-sent after their batch started: they join no new batch.
        for event_id in ("e1", "e2", "e3"):
            await engine.send_event("page.clicked", {"id": event_id}, event_id=event_id)
        assert await engine.storage.pending_batches() == []


async def test_full_batch_stored_before_a_crash_starts_its_run_at_start_up(
    db_path: Path,
) -> None:
    """The crash falls after the batch's last event is committed, before its run is made."""
    clicks = tw.define("clicks", tw.record, on_event=OnEvent("page.clicked", batch=Batch(3, "1h")))
    crash = CrashAt("event.committed")
    async with trigger_engine(db_path, clicks) as engine:
        await engine.send_event("page.clicked", {"i": 0}, event_id="e0")
        await engine.send_event("page.clicked", {"i": 1}, event_id="e1")
        engine.instrument = crash  # read at each passage
        with pytest.raises(Crash):
            await engine.send_event("page.clicked", {"i": 2}, event_id="e2")
        await asyncio.sleep(0.05)
        assert await runs_of(engine, "clicks") == []
    async with trigger_engine(db_path, clicks) as engine:
        run = await one_run_of(engine, "clicks")
        assert run["input"] == {"events": [{"i": 0}, {"i": 1}, {"i": 2}]}
        await completed(engine, run["run_id"])
        await engine.send_event("page.clicked", {"i": 2}, event_id="e2")  # the client's retry
        assert await engine.storage.pending_batches() == []
        assert len(await runs_of(engine, "clicks")) == 1


async def test_partial_batch_stored_before_a_restart_starts_when_its_timeout_comes(
    db_path: Path,
) -> None:
    timeout = 0.8
    clicks = tw.define("clicks", tw.record,
                       on_event=OnEvent("page.clicked", batch=Batch(10, timeout)))
    async with trigger_engine(db_path, clicks) as engine:
        first_sent = time.time()
        await engine.send_event("page.clicked", {"i": 0})
        await engine.send_event("page.clicked", {"i": 1})
    async with trigger_engine(db_path, clicks) as engine:
        assert await runs_of(engine, "clicks") == []  # not at start-up: it is not full
        run = await one_run_of(engine, "clicks")
        assert run["input"] == {"events": [{"i": 0}, {"i": 1}]}
        assert run["created_at"] >= first_sent + timeout
        await completed(engine, run["run_id"])


async def test_partial_batch_due_during_downtime_starts_at_start_up(db_path: Path) -> None:
    clicks = tw.define("clicks", tw.record,
                       on_event=OnEvent("page.clicked", batch=Batch(10, 0.2)))
    async with trigger_engine(db_path, clicks) as engine:
        await engine.send_event("page.clicked", {"i": 0})
        await engine.timers.stop()  # the engine goes down before the timeout
    await asyncio.sleep(0.3)
    async with trigger_engine(db_path, clicks) as engine:
        run = await one_run_of(engine, "clicks")
        assert run["input"] == {"events": [{"i": 0}]}
        await completed(engine, run["run_id"])


async def test_lone_event_of_a_batch_starts_its_run_at_the_timeout(db_path: Path) -> None:
    """The event's commit is slowed a little (a slow fsync), as under load; no other timer
    is stored, so nothing else wakes the timer task."""
    clicks = tw.define("clicks", tw.record,
                       on_event=OnEvent("page.clicked", batch=Batch(10, 0.2)))
    async with trigger_engine(db_path, clicks, slow_events=True) as engine:
        await engine.send_event("page.clicked", {"i": 0})
        run = await one_run_of(engine, "clicks", timeout=2.0)
        assert run["input"] == {"events": [{"i": 0}]}
        await completed(engine, run["run_id"])


async def test_partial_batch_whose_timeout_fired_just_before_a_crash_still_starts(
    db_path: Path,
) -> None:
    clicks = tw.define("clicks", tw.record,
                       on_event=OnEvent("page.clicked", batch=Batch(10, 0.2)))
    crash = CrashAt("timer.fired")  # the firing is committed, the flush has not run
    async with trigger_engine(db_path, clicks, instrument=crash) as engine:
        await engine.send_event("page.clicked", {"i": 0})
        await until(lambda: crash.crashed, "the batch's timer firing")
        assert await runs_of(engine, "clicks") == []
    async with trigger_engine(db_path, clicks) as engine:
        run = await one_run_of(engine, "clicks", timeout=2.0)
        assert run["input"] == {"events": [{"i": 0}]}


# --- cancel_on ------------------------------------------------------------------------------------

DELETED = CancelOn("user.deleted", match=tw.by_user)


async def test_matching_event_cancels_pending_runs_which_never_start(db_path: Path) -> None:
    queued = tw.define("sync-user", tw.held, concurrency=Concurrency(1), cancel_on=DELETED)
    async with trigger_engine(db_path, queued) as engine:
        await engine.submit("sync-user", {"user_id": "u1"}, run_id="holder")
        await reached(engine, "holder", "waiting")
        await engine.submit("sync-user", {"user_id": "u2"}, run_id="queued")
        await engine.submit("sync-user", {"user_id": "u2"}, run_id="delayed", delay=3600)
        assert (await engine.get("queued"))["status"] == "pending"

        sent = await engine.send_event("user.deleted", {"user_id": "u2", "why": "gdpr"})
        assert sent["cancelled"] == 2
        for run_id in ("queued", "delayed"):
            run = await engine.wait(run_id, timeout=REACH_TIMEOUT)
            assert run["status"] == "cancelled"
            assert run["started_at"] is None
        assert (await engine.get("holder"))["status"] == "waiting"  # u1: untouched
        await engine.signal("holder", "go", 1)
        await completed(engine, "holder")
        await asyncio.sleep(0.05)  # the freed slot goes to nobody
    assert tw.STARTED == ["holder"]


async def test_matching_event_cancels_a_parked_run_running_its_compensations(
    db_path: Path,
) -> None:
    parked = tw.define("sync-user", tw.held, cancel_on=DELETED)
    async with trigger_engine(db_path, parked) as engine:
        await engine.submit("sync-user", {"user_id": "u1"}, run_id="r1")
        await reached(engine, "r1", "waiting")
        sent = await engine.send_event("user.deleted", {"user_id": "u1"})
        assert sent["cancelled"] == 1
        run = await engine.wait("r1", timeout=REACH_TIMEOUT)
        assert run["status"] == "cancelled"
        detail = await engine.get("r1")
        assert [c["step_id"] for c in detail["compensations"]] == ["reserve"]
    assert tw.COMPENSATED == ["r1"]


async def test_cancel_rule_with_compensate_false_skips_the_compensations(db_path: Path) -> None:
    parked = tw.define("sync-user", tw.held,
                       cancel_on=CancelOn("user.deleted", match=tw.by_user, compensate=False))
    async with trigger_engine(db_path, parked) as engine:
        await engine.submit("sync-user", {"user_id": "u1"}, run_id="r1")
        await reached(engine, "r1", "waiting")
        assert (await engine.send_event("user.deleted", {"user_id": "u1"}))["cancelled"] == 1
        run = await engine.wait("r1", timeout=REACH_TIMEOUT)
        assert run["status"] == "cancelled"
        assert (await engine.get("r1"))["compensations"] == []
    assert tw.COMPENSATED == []


async def test_matching_event_cancels_a_run_in_the_middle_of_a_step(db_path: Path) -> None:
    running = tw.define("sync-user", tw.busy, cancel_on=DELETED)
    async with trigger_engine(db_path, running) as engine:
        await engine.submit("sync-user", {"user_id": "u1"}, run_id="r1")
        await asyncio.wait_for(tw.entered("r1").wait(), REACH_TIMEOUT)
        assert (await engine.get("r1"))["status"] == "running"
        assert (await engine.send_event("user.deleted", {"user_id": "u1"}))["cancelled"] == 1
        run = await engine.wait("r1", timeout=REACH_TIMEOUT)
        assert run["status"] == "cancelled"
    assert tw.COMPENSATED == ["r1"]


async def test_cancelled_counts_every_run_the_event_cancels_and_no_other(
    db_path: Path,
) -> None:
    parked = tw.define("sync-user", tw.held, cancel_on=DELETED)
    plain = tw.define("audit-user", tw.held)  # same input, no cancel rule
    other_type = tw.define("notify-user", tw.held,
                           cancel_on=CancelOn("user.banned", match=tw.by_user))
    async with trigger_engine(db_path, parked, plain, other_type) as engine:
        for run_id, workflow_id, user in [("a", "sync-user", "u1"), ("b", "sync-user", "u1"),
                                          ("c", "sync-user", "u1"), ("d", "sync-user", "u2"),
                                          ("e", "audit-user", "u1"), ("f", "notify-user", "u1")]:
            await engine.submit(workflow_id, {"user_id": user}, run_id=run_id)
            await reached(engine, run_id, "waiting")

        assert (await engine.send_event("user.deleted", {"user_id": "u1"}))["cancelled"] == 3
        for run_id in "abc":
            assert (await engine.wait(run_id, timeout=REACH_TIMEOUT))["status"] == "cancelled"
        for run_id in "def":
            assert (await engine.get(run_id))["status"] == "waiting"
        # Nothing left to cancel: the same kind of event now finds no run.
        assert (await engine.send_event("user.deleted", {"user_id": "u1"}))["cancelled"] == 0
        for run_id in "def":
            await engine.signal(run_id, "go", 1)
            await completed(engine, run_id)


async def test_event_matching_no_cancel_rule_cancels_nothing(db_path: Path) -> None:
    parked = tw.define("sync-user", tw.held, cancel_on=DELETED)
    async with trigger_engine(db_path, parked) as engine:
        await engine.submit("sync-user", {"user_id": "u1"}, run_id="r1")
        await reached(engine, "r1", "waiting")
        for event_type, payload in [("user.deleted", {"user_id": "u2"}),
                                    ("user.deleted", {"id": "u1"}),
                                    ("user.deleted", None),
                                    ("user.updated", {"user_id": "u1"}),
                                    ("user.deleted.later", {"user_id": "u1"})]:
            sent = await engine.send_event(event_type, payload)
            assert sent["cancelled"] == 0, (event_type, payload)
        assert (await engine.get("r1"))["status"] == "waiting"
        await engine.signal("r1", "go", 1)
        await completed(engine, "r1")


async def test_cancel_rule_without_match_or_with_a_wildcard_type(db_path: Path) -> None:
    everyone = tw.define("everyone", tw.held, cancel_on=CancelOn("maintenance.started"))
    wild = tw.define("wild", tw.held, cancel_on=CancelOn("user.*", match=tw.by_user))
    async with trigger_engine(db_path, everyone, wild) as engine:
        for run_id, workflow_id in [("e1", "everyone"), ("e2", "everyone"), ("w1", "wild")]:
            await engine.submit(workflow_id, {"user_id": "u1"}, run_id=run_id)
            await reached(engine, run_id, "waiting")
        assert (await engine.send_event("maintenance.started", {}))["cancelled"] == 2
        assert (await engine.send_event("users.purged", {"user_id": "u1"}))["cancelled"] == 0
        assert (await engine.send_event("user.erased", {"user_id": "u1"}))["cancelled"] == 1
        for run_id in ("e1", "e2", "w1"):
            assert (await engine.wait(run_id, timeout=REACH_TIMEOUT))["status"] == "cancelled"


async def test_terminal_runs_are_not_counted_as_cancelled(db_path: Path) -> None:
    quick = tw.define("sync-user", tw.record, cancel_on=DELETED)
    parked = tw.define("sync-held", tw.held, cancel_on=DELETED)
    async with trigger_engine(db_path, quick, parked) as engine:
        await engine.submit("sync-user", {"user_id": "u1"}, run_id="done")
        await completed(engine, "done")
        await engine.submit("sync-held", {"user_id": "u1"}, run_id="gone")
        await reached(engine, "gone", "waiting")
        await engine.cancel("gone")
        sent = await engine.send_event("user.deleted", {"user_id": "u1"})
        assert sent["cancelled"] == 0
        assert (await engine.get("done"))["status"] == "completed"


async def test_cancel_match_callable_is_called_once_at_submit_and_stored(db_path: Path) -> None:
    counted = tw.define("sync-user", tw.held,
                        cancel_on=CancelOn("user.deleted", match=tw.counted_match))
    async with trigger_engine(db_path, counted) as engine:
        for run_id, user in [("a", "u1"), ("b", "u2")]:
            await engine.submit("sync-user", {"user_id": user}, run_id=run_id)
            await reached(engine, run_id, "waiting")
        for _ in range(3):
            await engine.send_event("user.deleted", {"user_id": "nobody"})
        assert tw.MATCH_CALLS == {"u1": 1, "u2": 1}
    async with trigger_engine(db_path, counted) as engine:  # recovery reads the stored match
        await reached(engine, "a", "waiting")
        assert (await engine.send_event("user.deleted", {"user_id": "u2"}))["cancelled"] == 1
        assert (await engine.wait("b", timeout=REACH_TIMEOUT))["status"] == "cancelled"
        assert (await engine.get("a"))["status"] == "waiting"
        await engine.signal("a", "go", 1)
        await completed(engine, "a")
    assert tw.MATCH_CALLS == {"u1": 1, "u2": 1}


@pytest.mark.parametrize("match", [tw.broken_match, tw.scalar_match],
                         ids=["raises", "not-an-object"])
async def test_cancel_match_callable_that_fails_at_submit_is_validation(
    db_path: Path, match: Any
) -> None:
    bad = tw.define("sync-user", tw.held, cancel_on=[CancelOn("x"),
                                                     CancelOn("user.deleted", match=match)])
    async with trigger_engine(db_path, bad) as engine:
        with pytest.raises(errors.ValidationFailed) as info:
            await engine.submit("sync-user", {"user_id": "u1"}, run_id="r1")
        assert info.value.code == "VALIDATION"
        assert "sync-user" in str(info.value) and "cancel_on[1]" in str(info.value)
        assert (await engine.list())["runs"] == []
        with pytest.raises(errors.NotFound):
            await engine.get("r1")


async def test_event_triggered_run_is_cancelled_by_a_later_event(db_path: Path) -> None:
    welcome = tw.define("welcome", tw.held, on_event=OnEvent("user.signed_up"),
                        cancel_on=CancelOn("user.deleted", match=tw.by_user))
    async with trigger_engine(db_path, welcome) as engine:
        (run_id,) = (await engine.send_event("user.signed_up", {"user_id": "u1"}))["started"]
        await reached(engine, run_id, "waiting")
        sent = await engine.send_event("user.deleted", {"user_id": "u1"})
        assert (sent["started"], sent["cancelled"]) == ([], 1)
        assert (await engine.wait(run_id, timeout=REACH_TIMEOUT))["status"] == "cancelled"


async def test_event_that_starts_a_run_does_not_cancel_that_run(db_path: Path) -> None:
    """``on_event`` and ``cancel_on`` on one type: each update cancels the previous run for the
    same document and starts a new one."""
    latest = tw.define("reindex", tw.held, on_event=OnEvent("doc.updated"),
                       cancel_on=CancelOn("doc.updated", match=lambda i: {"doc": i["doc"]}))
    async with trigger_engine(db_path, latest) as engine:
        (old,) = (await engine.send_event("doc.updated", {"doc": 1, "v": 1}))["started"]
        await reached(engine, old, "waiting")
        sent = await engine.send_event("doc.updated", {"doc": 1, "v": 2})
        (new,) = sent["started"]
        assert sent["cancelled"] == 1
        assert (await engine.wait(old, timeout=REACH_TIMEOUT))["status"] == "cancelled"
        await reached(engine, new, "waiting")
        await engine.signal(new, "go", 1)
        await completed(engine, new)


async def test_two_cancel_rules_on_one_type_each_cancel(db_path: Path) -> None:
    """Closing either the user's account or the org's cancels the run."""
    either = tw.define("sync-member", tw.held, cancel_on=[
        CancelOn("account.closed", match=lambda i: {"user_id": i["user_id"]}),
        CancelOn("account.closed", match=lambda i: {"org_id": i["org_id"]}),
    ])
    async with trigger_engine(db_path, either) as engine:
        await engine.submit("sync-member", {"user_id": "u1", "org_id": "o1"}, run_id="by-user")
        await engine.submit("sync-member", {"user_id": "u2", "org_id": "o2"}, run_id="by-org")
        for run_id in ("by-user", "by-org"):
            await reached(engine, run_id, "waiting")
        assert (await engine.send_event("account.closed", {"org_id": "o2"}))["cancelled"] == 1
        assert (await engine.send_event("account.closed", {"user_id": "u1"}))["cancelled"] == 1
        for run_id in ("by-user", "by-org"):
            assert (await engine.wait(run_id, timeout=REACH_TIMEOUT))["status"] == "cancelled"


async def test_cancel_rule_applies_to_a_child_run_started_by_invoke(db_path: Path) -> None:
    child = tw.define("sync-user", tw.held, cancel_on=DELETED)
    caller = tw.define("caller", tw.parent)
    async with trigger_engine(db_path, child, caller) as engine:
        await engine.submit("caller", {"child": "sync-user", "child_input": {"user_id": "u1"}},
                            run_id="p")
        await until(lambda: _count(engine, "sync-user", 1), "the child run")
        (kid,) = await runs_of(engine, "sync-user")
        await reached(engine, kid["run_id"], "waiting")
        assert (await engine.send_event("user.deleted", {"user_id": "u1"}))["cancelled"] == 1
        kid_end = await engine.wait(kid["run_id"], timeout=REACH_TIMEOUT)
        assert kid_end["status"] == "cancelled"


async def test_cancel_survives_a_crash_right_after_the_event_is_committed(
    db_path: Path,
) -> None:
    parked = tw.define("sync-user", tw.held, cancel_on=DELETED)
    crash = CrashAt("event.committed")
    async with trigger_engine(db_path, parked) as engine:
        await engine.submit("sync-user", {"user_id": "u1"}, run_id="r1")
        await reached(engine, "r1", "waiting")
        engine.instrument = crash
        with pytest.raises(Crash):
            await engine.send_event("user.deleted", {"user_id": "u1"}, event_id="bye")
    async with trigger_engine(db_path, parked) as engine:
        await engine.send_event("user.deleted", {"user_id": "u1"}, event_id="bye")  # retry
        run = await engine.wait("r1", timeout=1.0)
        assert run["status"] == "cancelled"


# --- options checked at registration --------------------------------------------------------------


def wrong(value: Any) -> Any:
    """A value of the wrong type, passed on purpose (the check is at run time)."""
    return value



@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"on_event": OnEvent("a*b")}, ("on_event[0].type", "'a*b'")),
        ({"on_event": OnEvent("*")}, ("on_event[0].type", "'*'")),
        ({"on_event": OnEvent("")}, ("on_event[0].type", "''")),
        ({"on_event": [OnEvent("ok"), OnEvent("*.x")]}, ("on_event[1].type", "'*.x'")),
        ({"on_event": OnEvent("x", match=wrong(["a"]))}, ("on_event[0].match", "['a']")),
        ({"on_event": OnEvent("x", match=wrong(lambda p: {}))}, ("on_event[0].match", "lambda")),
        ({"on_event": OnEvent("x", match={"t": {1, 2}})}, ("on_event[0].match", "JSON")),
        ({"on_event": OnEvent("x", batch=Batch(0, "1s"))}, ("batch.max_size", "0")),
        ({"on_event": OnEvent("x", batch=Batch(True, "1s"))}, ("batch.max_size", "True")),
        ({"on_event": OnEvent("x", batch=Batch(2, "0s"))}, ("batch.timeout", "'0s'")),
        ({"on_event": OnEvent("x", batch=Batch(2, "soon"))}, ("batch.timeout", "soon")),
        ({"on_event": OnEvent("x", batch=Batch(2, 1, key=wrong(["k"])))}, ("batch.key", "['k']")),
        ({"on_event": OnEvent("x", batch=wrong((2, 1)))}, ("on_event[0].batch", "(2, 1)")),
        ({"on_event": "user.created"}, ("on_event", "'user.created'")),
        ({"cancel_on": CancelOn("a*b")}, ("cancel_on[0].type", "'a*b'")),
        ({"cancel_on": CancelOn("*")}, ("cancel_on[0].type", "'*'")),
        ({"cancel_on": CancelOn("x", match=wrong(5))}, ("cancel_on[0].match", "5")),
        ({"cancel_on": CancelOn("x", compensate=wrong("yes"))},
         ("cancel_on[0].compensate", "'yes'")),
        ({"cancel_on": CancelOn("x", compensate=wrong(1))}, ("cancel_on[0].compensate", "1")),
        ({"cancel_on": [CancelOn("x"), OnEvent("y")]}, ("cancel_on[1]", "OnEvent")),
    ],
)
def test_bad_trigger_option_is_a_value_error_naming_workflow_option_and_value(
    options: dict[str, Any], names: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError) as info:
        workflow("bad-triggers", **options)
    message = str(info.value)
    assert "'bad-triggers'" in message, message
    for name in names:
        assert name in message, message


# --- the events list and the dry run (the dashboard's events page) -------------------------------


async def test_events_list_what_each_resolved_and_started_and_a_dry_run_stores_nothing(
    db_path: Path,
) -> None:
    receipt = tw.define("receipt", tw.record, on_event=OnEvent("order.paid"))
    waiter = tw.define("waiter", tw.awaits_order)
    async with trigger_engine(db_path, receipt, waiter) as engine:
        for order in ("o1", "o2"):
            await engine.submit("waiter", {"order": order}, run_id=f"w-{order}")
            await reached(engine, f"w-{order}", "waiting")
        dry = await engine.send_event("order.paid", {"order": "o1"}, dry_run=True)
        assert dry == {"dry_run": True, "duplicate": False,
                       "would_resolve": [{"run_id": "w-o1", "waitpoint_id": "event:order.paid:0"}],
                       "would_start": [{"workflow_id": "receipt",
                                        "run_id": "evt:receipt:<new id>"}],
                       "would_batch": []}
        assert (await engine.events())["events"] == []  # the dry run stored nothing
        assert (await engine.get("w-o1"))["status"] == "waiting"
        sent = await engine.send_event("order.paid", {"order": "o1"}, event_id="e1")
        await engine.send_event("other", None, event_id="e2")
        listed = await engine.events()
        assert [e["event_id"] for e in listed["events"]] == ["e2", "e1"]
        e1 = listed["events"][1]
        assert e1["type"] == "order.paid" and e1["payload"] == {"order": "o1"}
        assert e1["resolved"] == [{"run_id": "w-o1", "waitpoint_id": "event:order.paid:0"}]
        assert e1["started"] == sent["started"] == ["evt:receipt:e1"]
        assert listed["events"][0]["resolved"] == [] and listed["next_before"] is None
        page = await engine.events(limit=1)
        assert [e["event_id"] for e in page["events"]] == ["e2"]
        rest = await engine.events(before=page["next_before"])
        assert [e["event_id"] for e in rest["events"]] == ["e1"]
        assert [e["event_id"] for e in (await engine.events(type="other"))["events"]] == ["e2"]
        again = await engine.send_event("order.paid", {"order": "o2"}, event_id="e1",
                                        dry_run=True)
        assert again["duplicate"] and again["would_resolve"] == []
        assert (await engine.get("w-o2"))["status"] == "waiting"
