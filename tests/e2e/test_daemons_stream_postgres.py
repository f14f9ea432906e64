"""``stream --follow`` on a daemon that does not drive the run (SPEC §13: any daemon answers
any method for any run). Two real ``wf daemon`` processes on the throwaway PostgreSQL: a run
submitted to A writes chunks with pauses; B, following it, gets each in order, once, within
milliseconds of its commit (the poll is set to 5 s, so only the owner's announcement can have
brought it), and its follow ends at the final chunk — or, when the source broke and no final
chunk came, when the run ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_daemons_notify_postgres import BOUND, POLL, _daemon, _percentiles
from tests.e2e.test_daemons_postgres import _daemon_id, _owned_by, _until
from tests.pg import fetch

pytestmark = pytest.mark.slow

CHUNKS = 12
PAUSE = 0.1  # seconds before each chunk


async def _follow(d: Daemon, run_id: str) -> list[tuple[dict[str, Any], float]]:
    """Every chunk ``d`` sends for ``run_id``'s stream, with the wall time it arrived."""
    got: list[tuple[dict[str, Any], float]] = []
    async with d.client() as c:
        async for chunk in c.stream(run_id, "out", follow=True):
            got.append((chunk, time.time()))
    return got


async def _submit_on_a_follow_on_b(
    make_daemon: Callable[..., Daemon], url: str, run_id: str, **input: Any
) -> tuple[Daemon, list[tuple[dict[str, Any], float]], float]:
    a = _daemon(make_daemon, url)
    b = _daemon(make_daemon, url)
    a_id = await _daemon_id(a)
    async with b.client() as c:
        await c.submit("e2e-echo", None)  # B's connections are warm before the clock starts
    async with a.client() as c:
        await c.submit("e2e-stream-paced", {"chunks": CHUNKS, "pause": PAUSE, **input},
                       run_id=run_id)
    follow_from = time.time()
    # The whole run takes CHUNKS * PAUSE; the follow must not wait for B's poll (5 s) at all.
    follow = asyncio.ensure_future(
        asyncio.wait_for(_follow(b, run_id), CHUNKS * PAUSE + POLL / 2))
    # A drives it (B only follows): seen while it runs, since an end clears the owner.
    await _until(lambda: _owned_by(url, [run_id], a_id), CHUNKS * PAUSE / 2, step=0.01)
    got = await follow

    async def ended() -> bool:
        rows = await fetch(url, "SELECT status FROM runs WHERE run_id = $1", run_id)
        return bool(rows[0][0] in ("completed", "failed"))

    # The final chunk is the stream step's commit and the run's end (which clears the owner) the
    # next one: on a loaded machine the follower can see the first before the second is made.
    await _until(ended, POLL)
    assert await fetch(url, "SELECT epoch, owner FROM runs WHERE run_id = $1", run_id) == [
        (1, None)]  # claimed once, by A, and never moved
    return a, got, follow_from


async def test_a_follower_on_the_other_daemon_gets_every_chunk_in_order_promptly(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    _a, got, follow_from = await _submit_on_a_follow_on_b(make_daemon, pg_url, "paced")
    chunks = [c for c, _at in got]
    assert [c["seq"] for c in chunks] == list(range(CHUNKS + 1))  # in order, none twice
    assert [c["chunk"] for c in chunks] == [f"c{i}" for i in range(CHUNKS)] + [None]
    assert [c["final"] for c in chunks] == [False] * CHUNKS + [True]  # and it ended there
    # Chunks committed after the follow began came live: from A's commit to B's reader.
    live = [arrived - c["at"] for c, arrived in got if c["at"] > follow_from]
    assert len(live) >= CHUNKS // 2, got
    _p50, p99 = _percentiles("cross-daemon stream chunk -> follower", live)
    assert p99 < BOUND < POLL, live


async def test_the_follow_ends_when_the_run_ends_without_a_final_chunk(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    a, got, _from = await _submit_on_a_follow_on_b(make_daemon, pg_url, "broken", fail=True)
    ended = time.time()
    chunks = [c for c, _at in got]
    assert [c["chunk"] for c in chunks] == [f"c{i}" for i in range(CHUNKS)]  # no final one
    async with a.client() as c:
        run = await c.get("broken")
    assert (run["status"], run["output"]) == ("completed", "broken")
    # Ended by A's status announcement, not by B's poll.
    assert ended - run["finished_at"] < BOUND < POLL, (ended, run["finished_at"])
