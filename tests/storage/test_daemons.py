"""The daemon registry and leases (SPEC §13), on both backends: the database clock judges."""

from __future__ import annotations

import asyncio

import storage as st
from tests.storage.conftest import make_run, raw


def _register(daemon_id: str, lease: float = 10.0) -> st.RegisterDaemon:
    return st.RegisterDaemon(daemon_id=daemon_id, name=f"host:{daemon_id}", host="host",
                             pid=42, version="1.0", socket="/tmp/wf.sock", http="", lease=lease)


async def test_a_registered_daemon_is_listed_live_with_its_lease(storage: st.Storage) -> None:
    until = await storage.execute(_register("d1", lease=10.0))
    [d] = await storage.list_daemons()
    assert (d.daemon_id, d.name, d.pid, d.version, d.live, d.runs) == (
        "d1", "host:d1", 42, "1.0", True, 0)
    assert d.lease_until == until
    assert 9.0 < d.lease_until - d.now <= 10.0
    assert d.started_at <= d.renewed_at <= d.now


async def test_renewal_extends_a_running_lease_and_records_where_it_listens(
    storage: st.Storage,
) -> None:
    first = await storage.execute(_register("d1", lease=5.0))
    renewed = await storage.execute(st.RenewLease("d1", 20.0, http="http://127.0.0.1:8080/"))
    assert renewed is not None and renewed > first + 10
    [d] = await storage.list_daemons()
    assert d.http == "http://127.0.0.1:8080/" and d.lease_until == renewed


async def test_a_lease_that_ran_out_is_not_renewed(storage: st.Storage) -> None:
    """Past its lease a daemon is dead for everyone: renewing must not revive it, because
    another daemon may already have adopted its runs."""
    await storage.execute(_register("d1", lease=0.05))
    await asyncio.sleep(0.15)
    [d] = await storage.list_daemons()
    assert not d.live
    assert await storage.execute(st.RenewLease("d1", 10.0)) is None
    assert await storage.execute(st.RenewLease("nobody", 10.0)) is None


async def test_retiring_releases_the_daemons_runs(storage: st.Storage) -> None:
    await storage.execute(_register("d1"))
    await make_run(storage, "r1")
    async with raw(storage) as db:
        await db.execute("UPDATE runs SET owner = 'd1', epoch = 3 WHERE run_id = 'r1'")
        assert [d.runs for d in await storage.list_daemons()] == [1]
        await storage.execute(st.RetireDaemon("d1"))
        assert await storage.list_daemons() == []
        assert await db.fetch("SELECT owner, epoch FROM runs") == [(None, 4)]


async def test_a_zero_lease_is_refused(storage: st.Storage) -> None:
    import pytest

    with pytest.raises(Exception, match="lease must be positive"):
        await storage.execute(_register("d1", lease=0))


async def test_a_fenced_daemon_writes_nothing_once_its_lease_ran_out(storage: st.Storage) -> None:
    """Where many daemons share the database, a daemon past its lease (a SIGSTOP, a pause)
    may have lost its runs: the batch is refused in its own transaction, and so is every
    later one, and ``failed`` says why. SQLite (one daemon per file) has nothing to fence."""
    await storage.execute(_register("d1", lease=0.3))
    storage.fence("d1", 0.3)
    await make_run(storage, "r1")  # a live lease: written
    await asyncio.sleep(0.45)
    if storage.capabilities().backend == "sqlite":
        await make_run(storage, "r2")
        return
    import pytest

    with pytest.raises(st.OwnershipLost):
        await make_run(storage, "r2")
    with pytest.raises(st.OwnershipLost):  # terminal: a renewal cannot revive it
        await storage.execute(st.RenewLease("d1", 10.0))
    assert isinstance(storage.failed.result(), st.OwnershipLost)
    assert [r.run_id for r in await storage.list_runs()] == ["r1"]


async def test_rescue_releases_only_the_runs_of_daemons_whose_lease_ran_out(
    storage: st.Storage,
) -> None:
    await storage.execute(_register("dead", lease=0.05))
    await storage.execute(_register("alive", lease=30))
    for run_id in ("r1", "r2", "r3"):
        await make_run(storage, run_id)
    async with raw(storage) as db:
        await db.execute("UPDATE runs SET owner = 'dead', epoch = 1 WHERE run_id IN ('r1', 'r2')")
        await db.execute("UPDATE runs SET owner = 'alive', epoch = 1 WHERE run_id = 'r3'")
        await asyncio.sleep(0.15)
        assert await storage.execute(st.RescueDaemons("alive")) == ("dead",)
        assert await storage.execute(st.RescueDaemons("alive")) == ()  # once
        assert sorted(await db.fetch("SELECT run_id, owner, epoch FROM runs")) == [
            ("r1", None, 2), ("r2", None, 2), ("r3", "alive", 1)]
    assert [d.daemon_id for d in await storage.list_daemons()] == ["alive"]


async def test_claims_take_unowned_unended_runs_by_priority_then_age(storage: st.Storage) -> None:
    await make_run(storage, "low")
    await make_run(storage, "high", priority=5)
    await make_run(storage, "done")
    await make_run(storage, "later")
    await storage.execute(st.UpdateRun("done", at=2.0, status=st.RunStatus.COMPLETED,
                                       finished_at=2.0))
    first = await storage.execute(st.ClaimRuns("d1", limit=2))
    assert [(c.run.run_id, c.epoch) for c in first] == [("high", 1), ("low", 1)]
    rest = await storage.execute(st.ClaimRuns("d2"))
    assert [(c.run.run_id, c.epoch) for c in rest] == [("later", 1)]
    assert await storage.execute(st.ClaimRuns("d2")) == ()
    assert await storage.execute(st.ClaimRuns("d2", limit=0)) == ()


async def test_a_pending_run_whose_start_is_to_come_is_not_claimed(storage: st.Storage) -> None:
    """Its start timer fires on whichever daemon claims the timer, whose actor then claims
    the run; owned by another daemon meanwhile, it would be left for an owner that never
    starts it. A start moved later releases the run likewise."""
    import time

    now = time.time()
    await make_run(storage, "later", created_at=now, scheduled_at=now + 600)
    await make_run(storage, "due", created_at=now, scheduled_at=now - 1)
    claimed = await storage.execute(st.ClaimRuns("d1"))
    assert [c.run.run_id for c in claimed] == ["due"]
    await storage.execute(st.ReschedulePending("due", at=now, scheduled_at=now + 600))
    async with raw(storage) as db:
        assert await db.fetch("SELECT owner FROM runs WHERE run_id = 'due'") == [(None,)]


async def test_a_run_is_claimed_by_one_daemon_and_its_resolutions_are_found_by_the_owner(
    storage: st.Storage,
) -> None:
    await make_run(storage, "r1")
    assert await storage.execute(st.ClaimRun("d1", "r1")) == 1
    assert await storage.execute(st.ClaimRun("d1", "r1")) == 1  # already its own: same epoch
    assert await storage.execute(st.ClaimRun("d2", "r1")) is None
    assert await storage.execute(st.ClaimRun("d2", "no-such-run")) is None
    assert await storage.owned_runs_to_move("d1") == []
    async with raw(storage) as db:
        await db.execute("UPDATE runs SET status = 'waiting', needs_resume = 1")
    assert await storage.owned_runs_to_move("d1") == ["r1"]
    assert await storage.owned_runs_to_move("d2") == []


async def test_an_ended_run_is_not_moved_for_its_leftover_cancel_request(
    storage: st.Storage,
) -> None:
    """An ended run keeps its cancel request: the owner's poll skips it."""
    await make_run(storage, "r1")
    assert await storage.execute(st.ClaimRun("d1", "r1")) == 1
    await storage.execute(st.RequestCancel("r1", at=2.0, reason="x"))
    assert await storage.owned_runs_to_move("d1") == ["r1"]
    await storage.execute(st.UpdateRun("r1", at=3.0, status=st.RunStatus.CANCELLED,
                                       finished_at=3.0))
    assert await storage.owned_runs_to_move("d1") == []


async def test_an_ended_run_is_nobodys_and_cannot_be_claimed(storage: st.Storage) -> None:
    """Whatever ends a run clears its owner (the one-by-one update, the set-based one, a pending
    run ended unstarted): `wf daemons` counts live runs, a rescue releases only those, and a
    late actor for an ended run claims nothing."""
    for run_id in ("one", "set1", "set2", "unstarted", "live"):
        await make_run(storage, run_id)
        assert await storage.execute(st.ClaimRun("d1", run_id)) == 1
    await storage.execute(st.RegisterDaemon(
        daemon_id="d1", name="h:1", host="h", pid=1, version="v", socket="/s", http="",
        lease=30))
    assert await storage.owned_runs("d1") == ["live", "one", "set1", "set2", "unstarted"]
    await storage.execute(st.UpdateRun("one", at=2.0, status=st.RunStatus.COMPLETED,
                                       finished_at=2.0))
    # One batch of updates to many runs: the PostgreSQL writer applies it set-based.
    await storage.commit([
        st.UpdateRun(run_id, at=2.0, status=st.RunStatus.FAILED, finished_at=2.0)
        for run_id in ("set1", "set2")])
    await storage.execute(st.EndPending("unstarted", at=2.0, status=st.RunStatus.CANCELLED))
    assert await storage.owned_runs("d1") == ["live"]
    assert [d.runs for d in await storage.list_daemons()] == [1]
    async with raw(storage) as db:
        assert await db.fetch("SELECT count(*) FROM runs WHERE owner IS NOT NULL") == [(1,)]
    assert await storage.execute(st.ClaimRun("d2", "one")) is None
    assert await storage.owned_runs("d2") == []


async def test_paused_runs_are_the_owners_and_those_asked_about(storage: st.Storage) -> None:
    """What the owner's poll compares with the pauses it holds in memory (SPEC §13): its own
    paused runs (flag or status) and, among the runs named, those paused, never ended ones."""
    for run_id in ("mine", "parked", "free", "theirs", "done", "plain"):
        await make_run(storage, run_id)
    for run_id in ("mine", "parked", "done", "plain"):
        assert await storage.execute(st.ClaimRun("d1", run_id)) == 1
    assert await storage.execute(st.ClaimRun("d2", "theirs")) == 1
    async with raw(storage) as db:
        await db.execute("UPDATE runs SET status = 'waiting' WHERE run_id = 'parked'")
    for run_id in ("mine", "parked", "free", "theirs", "done"):
        await storage.execute(st.RequestPause(run_id, at=2.0))
    await storage.execute(st.UpdateRun("done", at=3.0, status=st.RunStatus.COMPLETED,
                                       finished_at=3.0))
    assert (await storage.get_run("parked")).status is st.RunStatus.PAUSED  # type: ignore[union-attr]
    assert await storage.paused_runs("d1") == ["mine", "parked"]
    assert await storage.paused_runs("d1", ["free", "plain", "gone"]) == ["free", "mine",
                                                                           "parked"]
    assert await storage.paused_runs("d2", [f"x{i}" for i in range(1200)]) == ["theirs"]
    await storage.execute(st.ResumeRun("parked", at=4.0, status=st.RunStatus.WAITING))
    assert await storage.paused_runs("d1") == ["mine"]
