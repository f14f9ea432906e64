"""Several daemons claiming at once on one PostgreSQL database (SPEC §13): with
``FOR UPDATE SKIP LOCKED`` every due timer fires exactly once and every unowned run is claimed
exactly once, whichever writer gets it."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack

import asyncpg

import storage as st

CLAIMERS = 4


async def test_each_due_timer_fires_once_across_concurrent_claimers(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO timers (timer_id, kind, due_at, created_at) "
            "SELECT 't' || i, 'schedule', i * 0.001, 0 FROM generate_series(1, 2000) AS i")
    finally:
        await conn.close()
    async with AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(st.PostgresStorage.open(pg_url,
                                                                          exclusive=False))
                  for _ in range(CLAIMERS)]

        async def drain(s: st.Storage) -> list[str]:
            got: list[str] = []
            while fired := await s.claim_due_timers(before=10.0, limit=50):
                got.extend(f.timer.timer_id for f in fired)
            return got

        results = await asyncio.gather(*(drain(s) for s in stores))
    fired = Counter(t for got in results for t in got)
    assert len(fired) == 2000 and set(fired.values()) == {1}
    assert sum(1 for got in results if got) >= 2  # the claimers really shared the work


async def test_each_run_is_claimed_once_across_concurrent_claimers(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO runs (run_id, workflow_id, status, input, created_at, updated_at) "
            "SELECT 'run-' || i, 'wf', 'waiting', 'null', i, i FROM generate_series(1, 1000) i")
    finally:
        await conn.close()
    async with AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(st.PostgresStorage.open(pg_url,
                                                                          exclusive=False))
                  for _ in range(CLAIMERS)]

        async def claim(s: st.Storage, me: str) -> list[str]:
            got: list[str] = []
            while claimed := await s.execute(st.ClaimRuns(me, limit=25)):
                got.extend(c.run.run_id for c in claimed)
            return got

        results = await asyncio.gather(*(claim(s, f"d{i}") for i, s in enumerate(stores)))
    claimed = Counter(r for got in results for r in got)
    assert len(claimed) == 1000 and set(claimed.values()) == {1}
    conn = await asyncpg.connect(pg_url)
    try:
        owners = dict(await conn.fetch("SELECT owner, count(*) FROM runs GROUP BY owner"))
    finally:
        await conn.close()
    assert owners == {f"d{i}": len(got) for i, got in enumerate(results) if got}


async def test_rescue_skips_a_dead_daemon_whose_batch_is_still_open(pg_url: str) -> None:
    """A daemon stopped mid-batch holds its lease row (the fence's FOR SHARE): the rescuer
    must not block on it (its own lease would lapse meanwhile), but leave it for a later tick;
    once the stopped daemon's transaction ends (the server ends it after half a lease idle),
    the rescue goes through."""
    async with st.PostgresStorage.open(pg_url, exclusive=False) as s:
        for daemon_id, lease in (("dead", 0.05), ("alive", 30.0)):
            await s.execute(st.RegisterDaemon(daemon_id=daemon_id, name=daemon_id, host="h",
                                              pid=1, version="v", socket="", http="",
                                              lease=lease))
        stalled = await asyncpg.connect(pg_url)
        try:
            tx = stalled.transaction()
            await tx.start()
            await stalled.execute("SELECT 1 FROM daemons WHERE daemon_id = 'dead' FOR SHARE")
            await asyncio.sleep(0.1)
            assert await asyncio.wait_for(s.execute(st.RescueDaemons("alive")), 2) == ()
            await tx.rollback()
        finally:
            await stalled.close()
        assert await s.execute(st.RescueDaemons("alive")) == ("dead",)



async def test_a_daemon_cannot_write_the_journal_of_a_run_another_daemon_owns(
    pg_url: str,
) -> None:
    """Per-run fencing: journal and status writes for a run owned by another daemon are
    refused (``RunNotOwned``), in the same transaction as the callers beside it that commit."""
    async with st.PostgresStorage.open(pg_url, exclusive=False) as s:
        await s.execute(st.RegisterDaemon(daemon_id="me", name="me", host="h", pid=1,
                                          version="v", socket="", http="", lease=30.0))
        s.fence("me", 30.0)
        for run_id in ("mine", "theirs", "nobodys"):
            await s.create_run(st.CreateRun(run_id=run_id, workflow_id="wf", created_at=1.0))
        assert await s.execute(st.ClaimRun("me", "mine")) == 1
        assert await s.execute(st.ClaimRun("other", "theirs")) == 1

        def step(run_id: str) -> st.RecordStepAttempt:
            return st.RecordStepAttempt(run_id, "s", 1, st.StepStatus.COMPLETED, output=1)

        results = await asyncio.gather(
            *(s.commit([step(r)]) for r in ("mine", "theirs", "nobodys")),
            s.commit([st.UpdateRun("theirs", at=2.0, status=st.RunStatus.RUNNING)]),
            return_exceptions=True)
        assert [type(r).__name__ for r in results] == [
            "list", "RunNotOwned", "list", "RunNotOwned"]
        assert not s.failed.done()  # not the daemon's end: only that run is not its own
        written = {r.run_id: len((await s.load_journal(r.run_id)).steps)
                   for r in await s.list_runs()}
        assert written == {"mine": 1, "theirs": 0, "nobodys": 1}
