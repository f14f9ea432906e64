"""Admission in the database (issue 20, phase 3), on both backends: ``AdmitRuns`` counts a
group's holders from the runs' stored status, queues the rest, takes them priority then age
when a slot frees, spaces a throttle window by the stored admissions; ``DebounceSubmit``
collapses into the key's pending run. On PostgreSQL two storages (two daemons' writers) on
one database never admit above the limit."""

from __future__ import annotations

import asyncio
from typing import Any

import storage as st
from tests import pg
from tests.storage.conftest import make_run, raw

ONE = st.FlowRules(limits=(("g", False, 1),))
TWO_PER_KEY = st.FlowRules(limits=(("k", True, 2),))
GROUP = {"groups": [["g", None]], "throttle": None, "debounce": None}


def _admit(run_id: str | None = None, *, at: float = 2000.0, rules: st.FlowRules = ONE,
           daemon: str = "d1", **kw: Any) -> st.AdmitRuns:
    return st.AdmitRuns(daemon, at, rules, offer=run_id, **kw)


async def _finish(s: st.Storage, run_id: str, at: float = 2100.0) -> None:
    await s.execute(st.UpdateRun(run_id, at=at, status=st.RunStatus.COMPLETED, finished_at=at))


async def test_one_slot_admits_the_first_and_queues_the_next(storage: st.Storage) -> None:
    await make_run(storage, "a", flow=GROUP)
    await make_run(storage, "b", flow=GROUP)
    first = await storage.execute(_admit("a"))
    assert first.offered == "admitted" and [r.run_id for r in first.admitted] == ["a"]
    assert first.admitted[0].admitted_at == 2000.0
    second = await storage.execute(_admit("b", daemon="d2"))
    assert second.offered == "queued" and second.group == ("g", None) and not second.admitted
    # An admitted run that has not started yet holds its slot: offering it again is a no-op
    # for anyone but its owner.
    assert (await storage.execute(_admit("a", daemon="d2"))).offered == "gone"
    async with raw(storage) as db:
        assert await db.fetch("SELECT run_id, owner FROM runs ORDER BY run_id") == [
            ("a", "d1"), ("b", None)]
    # The holder runs, then ends: the pump of its group (by any daemon) takes the next.
    await storage.execute(st.UpdateRun("a", at=2001.0, status=st.RunStatus.RUNNING,
                                       started_at=2001.0))
    assert not (await storage.execute(_admit(pump=(("g", None),), daemon="d2"))).admitted
    await _finish(storage, "a")
    pumped = await storage.execute(_admit(pump=(("g", None),), daemon="d2"))
    assert [r.run_id for r in pumped.admitted] == ["b"]
    async with raw(storage) as db:
        assert await db.fetch("SELECT owner FROM runs WHERE run_id = 'b'") == [("d2",)]
        # The ended holder's row went when the group was counted.
        assert await db.fetch("SELECT run_id FROM run_groups") == [("b",)]


async def test_queued_runs_start_by_priority_then_age(storage: st.Storage) -> None:
    await make_run(storage, "holder", flow=GROUP)
    assert (await storage.execute(_admit("holder"))).offered == "admitted"
    for i, priority in enumerate((0, 0, 5, 0)):
        await make_run(storage, f"q{i}", flow=GROUP, priority=priority, created_at=1000.0 + i)
        assert (await storage.execute(_admit(f"q{i}"))).offered == "queued"
    order = []
    holder = "holder"
    for _ in range(4):
        await _finish(storage, holder)
        pumped = await storage.execute(_admit(pump=(("g", None),)))
        [run] = pumped.admitted
        order.append(run.run_id)
        holder = run.run_id
    assert order == ["q2", "q0", "q1", "q3"]


async def test_keyed_groups_count_per_key_and_prefer_the_key_with_fewer_holders(
    storage: st.Storage,
) -> None:
    def keyed(key: str) -> dict[str, Any]:
        return {"groups": [["k", key]], "throttle": None, "debounce": None}

    for i in range(3):
        await make_run(storage, f"x{i}", flow=keyed("x"))
    await make_run(storage, "y0", flow=keyed("y"))
    got = [(await storage.execute(_admit(r, rules=TWO_PER_KEY))).offered
           for r in ("x0", "x1", "x2", "y0")]
    assert got == ["admitted", "admitted", "queued", "admitted"]


async def test_paused_delayed_and_expired_runs_are_not_taken_from_the_queue(
    storage: st.Storage,
) -> None:
    await make_run(storage, "holder", flow=GROUP)
    await storage.execute(_admit("holder"))
    await make_run(storage, "paused", flow=GROUP)
    await make_run(storage, "late", flow=GROUP, expires_at=2050.0)
    await make_run(storage, "next", flow=GROUP)
    for run_id in ("paused", "late", "next"):
        assert (await storage.execute(_admit(run_id))).offered == "queued"
    async with raw(storage) as db:
        await db.execute("UPDATE runs SET paused = 1 WHERE run_id = 'paused'")
    await _finish(storage, "holder")
    pumped = await storage.execute(_admit(pump=(("g", None),), at=2060.0))
    assert [r.run_id for r in pumped.admitted] == ["next"]


async def test_cancel_newest_refuses_and_cancel_in_progress_replaces(storage: st.Storage) -> None:
    await make_run(storage, "a", flow=GROUP)
    await make_run(storage, "b", flow=GROUP)
    await make_run(storage, "c", flow=GROUP)
    await make_run(storage, "d", flow=GROUP)
    await storage.execute(_admit("a"))
    refused = await storage.execute(_admit("b", strategies=("cancel-newest",)))
    assert refused.offered == "refused" and refused.group == ("g", None)
    assert (await storage.execute(_admit("c"))).offered == "queued"
    replaced = await storage.execute(_admit("d", strategies=("cancel-in-progress",)))
    assert replaced.offered == "queued"
    assert replaced.replaced_holders == ("a",)
    assert [r.run_id for r in replaced.replaced_queued] == ["c"]
    async with raw(storage) as db:  # c left the queue: only the newcomer waits
        assert sorted(await db.fetch("SELECT run_id FROM run_groups")) == [("a",), ("d",)]


async def test_a_released_admission_goes_back_to_the_queue(storage: st.Storage) -> None:
    await make_run(storage, "a", flow=GROUP)
    await make_run(storage, "b", flow=GROUP)
    await storage.execute(_admit("a"))
    await storage.execute(_admit("b"))
    async with raw(storage) as db:
        await db.execute("UPDATE runs SET paused = 1 WHERE run_id = 'a'")
    pumped = await storage.execute(_admit(pump=(("g", None),), release=("a",)))
    assert [r.run_id for r in pumped.admitted] == ["b"]


async def test_throttle_spaces_admissions_by_the_stored_ones(storage: st.Storage) -> None:
    rules = st.FlowRules(throttles=(("wf", st.ThrottleRule(1, 10.0, 1)),))
    flow = {"groups": [], "throttle": "wf\x1f", "debounce": None}
    for run_id in ("a", "b"):
        await make_run(storage, run_id, flow=flow, throttle_key="wf\x1f")
    assert (await storage.execute(_admit("a", rules=rules))).offered == "admitted"
    later = await storage.execute(_admit("b", rules=rules, at=2003.0, daemon="d2"))
    assert later.offered == "throttled" and later.throttled_until == 2010.0
    assert (await storage.execute(_admit("b", rules=rules, at=2010.0))).offered == "admitted"


def test_the_throttle_rule_matches_the_single_daemon_windows() -> None:
    """One definition of the rule: the in-memory windows and the admission op agree."""
    from orchestrator.engine.flow.throttle import Windows
    from runtime.flow import Throttle

    spec = Throttle(3, "10s", burst=1)
    windows = Windows()
    for t in (100.0, 101.0):
        windows.record("k", t)
    rule = st.ThrottleRule(3, 10.0, 1)
    for now in (101.0, 103.0, 104.0, 120.0):
        assert windows.next_start("k", spec, now) == rule.next_start([100.0, 101.0], now)


async def test_debounce_collapses_into_the_keys_pending_run(storage: st.Storage) -> None:
    def submit(run_id: str, at: float, value: int) -> st.DebounceSubmit:
        create = st.CreateRun(run_id=run_id, workflow_id="wf", created_at=at, input=value,
                              scheduled_at=at + 5.0, flow={"debounce": "k"})
        return st.DebounceSubmit(create, "k", period=5.0, max_wait=8.0, trailing=True)

    first = await storage.execute(submit("r1", 1000.0, 1))
    assert first.created and first.run.run_id == "r1"
    again = await storage.execute(submit("r2", 1002.0, 2))
    assert not again.created and again.run.run_id == "r1"
    assert (again.run.scheduled_at, again.run.input) == (1007.0, 2)
    capped = await storage.execute(submit("r3", 1006.0, 3))
    assert capped.run.run_id == "r1" and capped.run.scheduled_at == 1008.0  # max_wait
    # Once its start has come, a submission opens a new debounce.
    fresh = await storage.execute(submit("r4", 1009.0, 4))
    assert fresh.created and fresh.run.run_id == "r4"
    assert await storage.existing_runs(["r2", "r3"]) == set()


async def test_two_writers_on_one_postgres_never_admit_above_the_limit(
    pg_cluster: Any,
) -> None:
    """Two daemons' storages offering 12 runs of a Concurrency(2) group at once: exactly two
    are admitted, whatever the interleaving of their batches."""
    url = await pg.create_database(pg_cluster)
    try:
        async with st.PostgresStorage.open(url, exclusive=False) as a, \
                st.PostgresStorage.open(url, exclusive=False) as b:
            rules = st.FlowRules(limits=(("g", False, 2),))
            for i in range(12):
                await make_run(a, f"r{i}", flow=GROUP)
            results = await asyncio.gather(*(
                (a if i % 2 else b).execute(st.AdmitRuns(f"d{i % 2}", 2000.0, rules,
                                                         offer=f"r{i}"))
                for i in range(12)))
            admitted = [r.run_id for res in results for r in res.admitted]
            assert len(admitted) == len(set(admitted)) == 2
            assert sum(res.offered == "admitted" for res in results) == 2
    finally:
        await pg.drop_database(pg_cluster, url)


async def test_a_queued_run_is_nobodys_until_a_pump_admits_it(storage: st.Storage) -> None:
    """Queueing clears the run's owner and ``ClaimRuns`` leaves it alone, so no daemon but
    the one whose pump admits it believes it drives it."""
    await make_run(storage, "holder", flow=GROUP)
    await make_run(storage, "queued", flow=GROUP)
    await storage.execute(_admit("holder"))
    async with raw(storage) as db:
        await db.execute("UPDATE runs SET owner = 'd2' WHERE run_id = 'queued'")
    assert (await storage.execute(_admit("queued"))).offered == "queued"
    assert await storage.execute(st.ClaimRuns("d3")) == ()
    async with raw(storage) as db:
        assert await db.fetch("SELECT owner FROM runs WHERE run_id = 'queued'") == [(None,)]
    await _finish(storage, "holder")
    pumped = await storage.execute(_admit(pump=(("g", None),), daemon="d3"))
    assert [r.run_id for r in pumped.admitted] == ["queued"]


async def test_concurrency_groups_counts_holders_and_due_queued_runs_as_admission_does(
    storage: st.Storage,
) -> None:
    """Holders whichever daemon admitted them; queued runs only when due and not paused; an
    ended run's row counts for nothing; asked-for groups come back even when empty."""
    await make_run(storage, "ended", flow=GROUP)
    await make_run(storage, "a", flow=GROUP)
    await storage.execute(_admit("ended"))
    await _finish(storage, "ended")
    await storage.execute(_admit("a", daemon="d2"))
    for run_id in ("q", "paused", "later"):
        await make_run(storage, run_id, flow=GROUP)
        assert (await storage.execute(_admit(run_id))).offered == "queued"
    async with raw(storage) as db:
        await db.execute("UPDATE runs SET paused = 1 WHERE run_id = 'paused'")
        await db.execute("UPDATE runs SET scheduled_at = 3000.0 WHERE run_id = 'later'")
    assert await storage.concurrency_groups(2000.0) == [st.GroupState(("g", None), ("a",), 1)]
    assert await storage.concurrency_groups(3000.0, [("none", "k"), ("g", None)]) == [
        st.GroupState(("none", "k"), (), 0), st.GroupState(("g", None), ("a",), 2)]
    await _finish(storage, "a")
    assert await storage.concurrency_groups(2000.0) == [st.GroupState(("g", None), (), 1)]


async def test_a_cancel_in_progress_newcomer_goes_before_runs_queued_after_it(
    storage: st.Storage,
) -> None:
    """The newcomer replaced the holder; a higher-priority run of a queueing workflow sharing
    the scope, queued after it by another daemon, does not take the freed slot first."""
    rules = st.FlowRules(limits=(("g", False, 1),), replacing=(("latest", "g", False),))
    await make_run(storage, "old", workflow_id="latest", flow=GROUP)
    await make_run(storage, "new", workflow_id="latest", flow=GROUP, created_at=1001.0)
    await make_run(storage, "urgent", workflow_id="other", flow=GROUP, priority=9,
                   created_at=1002.0)
    assert (await storage.execute(_admit("old", rules=rules))).offered == "admitted"
    replaced = await storage.execute(_admit("new", rules=rules,
                                            strategies=("cancel-in-progress",)))
    assert replaced.offered == "queued" and replaced.replaced_holders == ("old",)
    queued = await storage.execute(_admit("urgent", rules=rules, daemon="d2"))
    assert queued.offered == "queued"
    await _finish(storage, "old")
    pumped = await storage.execute(_admit(pump=(("g", None),), rules=rules, daemon="d3"))
    assert [r.run_id for r in pumped.admitted] == ["new"]
    await _finish(storage, "new")
    pumped = await storage.execute(_admit(pump=(("g", None),), rules=rules))
    assert [r.run_id for r in pumped.admitted] == ["urgent"]
