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
