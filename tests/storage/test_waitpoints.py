from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import storage as st
from tests.storage.conftest import deep_subset, make_run

K = st.WaitpointKind


def event_wp(run_id: str, n: int = 0, match: object = None, **kw: object) -> st.RegisterWaitpoint:
    return st.RegisterWaitpoint(run_id=run_id, wp_id=f"event:order.paid:{n}", kind=K.EVENT,
                                registered_at=10.0 + n, event_type="order.paid", match=match,
                                matches=deep_subset, **kw)  # type: ignore[arg-type]


def signal_wp(run_id: str, n: int = 0) -> st.RegisterWaitpoint:
    return st.RegisterWaitpoint(run_id=run_id, wp_id=f"signal:approve:{n}", kind=K.SIGNAL,
                                registered_at=10.0 + n, signal_name="approve")


async def test_register_waitpoint_is_idempotent(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    first = await storage.execute(event_wp("r1", match={"id": 1}, meta={"n": 0}))
    again = await storage.execute(event_wp("r1", match={"id": 2}))
    assert first.created and not again.created
    assert again.waitpoint == first.waitpoint
    assert first.waitpoint.match == {"id": 1} and first.waitpoint.meta == {"n": 0}
    assert await storage.get_waitpoint("r1", "event:order.paid:0") == first.waitpoint


async def test_event_resolves_every_matching_waiter_once(storage: st.Storage) -> None:
    for run in ("a", "b", "c"):
        await make_run(storage, run)
    await storage.execute(event_wp("a", match={"order": {"id": 1}}))
    await storage.execute(event_wp("b"))
    await storage.execute(event_wp("c", match={"order": {"id": 2}}))
    assert len(await storage.waiting_waitpoints_for_event("order.paid")) == 3
    event = st.RecordEvent("e1", "order.paid", {"order": {"id": 1, "x": 0}}, 20.0, deep_subset)
    recorded = await storage.record_event(event)
    assert recorded.inserted
    assert sorted(w.run_id for w in recorded.resolved) == ["a", "b"]
    assert all(w.source == "live" and w.matched_event_id == "e1" for w in recorded.resolved)
    again = await storage.record_event(event)
    assert (again.inserted, again.resolved) == (False, ())
    assert [w.run_id for w in await storage.waiting_waitpoints_for_event("order.paid")] == ["c"]
    stored = await storage.get_waitpoint("a", "event:order.paid:0")
    assert stored is not None and stored.payload == {"order": {"id": 1, "x": 0}}
    assert await storage.get_event("e1") == st.EventRecord("e1", "order.paid",
                                                           {"order": {"id": 1, "x": 0}}, 20.0)


async def test_lookback_resolves_from_the_oldest_matching_stored_event(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    for i, (when, oid) in enumerate([(1.0, 1), (5.0, 2), (6.0, 1), (7.0, 1)]):
        await storage.record_event(
            st.RecordEvent(f"e{i}", "order.paid", {"id": oid}, when, deep_subset))
    first = await storage.execute(event_wp("r1", 0, match={"id": 1}, lookback_from=4.0))
    wp = first.waitpoint
    assert (wp.status, wp.source, wp.matched_event_id) == ("resolved", "inbox", "e2")
    # the next wait of the same run does not consume the same event again
    second = await storage.execute(event_wp("r1", 1, match={"id": 1}, lookback_from=4.0))
    assert second.waitpoint.matched_event_id == "e3"
    third = await storage.execute(event_wp("r1", 2, match={"id": 9}, lookback_from=0.0))
    assert third.waitpoint.is_waiting


async def test_signal_goes_to_waiter_else_inbox_consumed_oldest_first(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    sent = await storage.send_signal(st.SendSignal("r1", "approve", {"n": 1}, 1.0))
    await storage.send_signal(st.SendSignal("r1", "approve", {"n": 2}, 2.0))
    assert (sent.delivered, sent.waitpoint) == (False, None)
    assert [s.payload for s in await storage.signal_inbox("r1", "approve")] == [{"n": 1}, {"n": 2}]
    got = await storage.execute(signal_wp("r1", 0))
    assert (got.waitpoint.status, got.waitpoint.source, got.waitpoint.payload) == (
        "resolved", "inbox", {"n": 1})
    assert [s.payload for s in await storage.signal_inbox("r1")] == [{"n": 2}]
    await storage.execute(signal_wp("r1", 1))  # consumes {"n": 2}
    waiting = await storage.execute(signal_wp("r1", 2))
    assert waiting.waitpoint.is_waiting
    live = await storage.send_signal(st.SendSignal("r1", "approve", {"n": 3}, 3.0))
    assert live.delivered and live.waitpoint is not None
    assert (live.waitpoint.wp_id, live.waitpoint.source) == ("signal:approve:2", "live")
    assert await storage.signal_inbox("r1") == []


async def test_signal_to_unknown_run_is_not_found(storage: st.Storage) -> None:
    with pytest.raises(st.NotFound, match="ghost"):
        await storage.send_signal(st.SendSignal("ghost", "x", None, 1.0))


async def test_token_completes_once(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    await storage.execute(st.RegisterWaitpoint("r1", "token:T1", K.MANUAL, 1.0, token_id="T1",
                                               timeout_at=100.0))
    token = await storage.get_token("T1")
    assert token is not None and not token.completed
    wp = await storage.complete_token(st.CompleteToken("T1", {"ok": True}, 5.0))
    assert (wp.run_id, wp.payload, wp.source) == ("r1", {"ok": True}, "live")
    assert await storage.due_timers(1e12, 10) == []  # its timeout timer went with it
    with pytest.raises(st.TokenConflict) as err:
        await storage.complete_token(st.CompleteToken("T1", {}, 6.0))
    assert err.value.code == "TOKEN_CONFLICT"
    with pytest.raises(st.NotFound):
        await storage.complete_token(st.CompleteToken("nope", {}, 6.0))
    token = await storage.get_token("T1")
    assert token is not None and token.completed


async def test_token_id_held_by_another_waitpoint_conflicts(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    await make_run(storage, "r2")
    await storage.execute(st.RegisterWaitpoint("r1", "token:T", K.MANUAL, 1.0, token_id="T"))
    with pytest.raises(st.TokenConflict):
        await storage.execute(st.RegisterWaitpoint("r2", "token:T", K.MANUAL, 1.0, token_id="T"))
    assert await storage.get_waitpoint("r2", "token:T") is None


async def test_sleep_timer_fires_once_and_resolves_its_waitpoint(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    await storage.execute(st.RegisterWaitpoint("r1", "sleep:0", K.DATETIME, 1.0, due_at=50.0))
    assert await storage.next_timer_due() == 50.0
    [timer] = await storage.due_timers(50.0, 10)
    assert (timer.timer_id, timer.kind, timer.wp_id) == ("wp:r1:sleep:0", "sleep", "sleep:0")
    assert await storage.execute(st.FireTimer(timer.timer_id, 49.0)) is None  # not yet due
    fired = await storage.execute(st.FireTimer(timer.timer_id, 51.0))
    assert fired is not None and fired.waitpoint is not None
    assert (fired.waitpoint.status, fired.waitpoint.source) == ("resolved", "live")
    assert await storage.execute(st.FireTimer(timer.timer_id, 52.0)) is None
    assert await storage.next_timer_due() is None


async def test_timeout_and_event_racing_resolve_exactly_once(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    await storage.execute(event_wp("r1", timeout_at=30.0))
    fired, recorded = await asyncio.gather(
        storage.claim_due_timers(31.0),
        storage.record_event(st.RecordEvent("e", "order.paid", {}, 31.0, deep_subset)),
    )
    resolved_by_timer = [f for f in fired if f.waitpoint is not None]
    assert len(resolved_by_timer) + len(recorded.resolved) == 1
    wp = await storage.get_waitpoint("r1", "event:order.paid:0")
    assert wp is not None and wp.source in ("timeout", "live")


async def test_claim_due_timers_fires_oldest_first_up_to_limit(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    for i, due in enumerate([30.0, 10.0, 20.0, 99.0]):
        await storage.execute(st.UpsertTimer(f"t{i}", st.TimerKind.RETRY, due, 1.0, run_id="r1",
                                             payload={"i": i}))
    assert [t.timer_id for t in await storage.due_timers(50.0, 10)] == ["t1", "t2", "t0"]
    fired = await storage.claim_due_timers(50.0, limit=2)
    assert [(f.timer.timer_id, f.waitpoint) for f in fired] == [("t1", None), ("t2", None)]
    assert [f.timer.payload for f in await storage.claim_due_timers(50.0)] == [{"i": 0}]
    assert await storage.claim_due_timers(50.0) == []
    assert await storage.execute(st.DeleteTimer("t3")) is True
    assert await storage.execute(st.DeleteTimer("t3")) is False


async def test_resolve_waitpoint_reports_only_the_first_resolution(storage: st.Storage) -> None:
    await make_run(storage, "r1")
    await storage.execute(st.RegisterWaitpoint("r1", "invoke:c:0", K.RUN, 1.0, timeout_at=9.0))
    op = st.ResolveWaitpoint("r1", "invoke:c:0", 2.0, st.ResolutionSource.LIVE,
                             error={"code": "CHILD_RUN_FAILED"})
    assert await storage.execute(op) is True
    assert await storage.execute(op) is False
    wp = await storage.get_waitpoint("r1", "invoke:c:0")
    assert wp is not None and wp.error == {"code": "CHILD_RUN_FAILED"}
    assert await storage.next_timer_due() is None
    journal = await storage.load_journal("r1")
    assert [w.wp_id for w in journal.waitpoints] == ["invoke:c:0"]


async def test_waiting_waitpoints_are_counted_by_kind(storage: st.Storage) -> None:
    """What ``/metrics`` reports as ``wf_waitpoints_waiting{kind}``: only those still waiting."""
    assert await storage.waiting_by_kind() == {}
    for run in ("a", "b", "c"):
        await make_run(storage, run)
    await storage.execute(event_wp("a"))
    await storage.execute(event_wp("b"))
    await storage.execute(signal_wp("c"))
    assert await storage.waiting_by_kind() == {"EVENT": 2, "SIGNAL": 1}
    await storage.record_event(st.RecordEvent("e1", "order.paid", {}, 20.0, deep_subset))
    assert await storage.waiting_by_kind() == {"SIGNAL": 1}
    await storage.send_signal(st.SendSignal("c", "approve", None, 21.0))
    assert await storage.waiting_by_kind() == {}


async def test_the_waiting_count_reads_only_the_partial_index(tmp_path: Path) -> None:
    """``/metrics``' one database read (every 15 s) costs no table scan: the SQL that
    ``waiting_by_kind`` runs is answered from 0011's partial index of the waiting entries."""
    async with st.SQLiteStorage.open(tmp_path / "wf.db") as s:
        seen: list[str] = []
        fetch = s._fetch

        async def spy(sql: str, *args: Any, **kwargs: Any) -> Any:
            seen.append(sql)
            return await fetch(sql, *args, **kwargs)

        s._fetch = spy  # type: ignore[method-assign]
        assert await s.waiting_by_kind() == {}
    (sql,) = seen
    conn = sqlite3.connect(tmp_path / "wf.db")
    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    conn.close()
    # One entry per waiting waitpoint, each with its row (SQLite 3.40 does not count the
    # partial index's own WHERE as covering `status`): never the resolved ones.
    assert plan == ["SCAN waitpoints USING INDEX waitpoints_waiting_kind"], plan
