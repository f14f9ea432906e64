"""Real ``wf daemon`` processes on a throwaway PostgreSQL (SPEC §13): a signal sent to a daemon
that does not own the run reaches its owner by LISTEN/NOTIFY, well within the poll interval
(set to 5 s here, so the poll cannot be what delivered it), and a LISTEN connection the server
killed is re-established and delivery goes on."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import pytest

from storage.postgres.notify import application_name
from tests.e2e.conftest import Daemon
from tests.e2e.test_daemons_postgres import _daemon_id, _fetch, _owned_by, _statuses, _until

pytestmark = pytest.mark.slow

POLL = 5.0  # the fallback poll: anything delivered much faster came by NOTIFY
BOUND = 0.5  # asserted per-signal bound, generous on a shared 2-core machine (target: 0.1 s)
SIGNALS = 50


def _daemon(make_daemon: Callable[..., Daemon], url: str) -> Daemon:
    # A long lease keeps the cluster loop's own pace out of it; the poll is explicit.
    return make_daemon(storage={"url": url}, daemon={"lease": "30s", "poll": f"{POLL}s"})


async def _parked_on(owner: Daemon, url: str, owner_id: str, runs: list[str]) -> None:
    async with owner.client() as c:
        for run_id in runs:
            await c.submit("e2e-signal", None, run_id=run_id)

    async def all_parked() -> bool:
        return (set((await _statuses(owner, runs)).values()) == {"waiting"}
                and await _owned_by(url, runs, owner_id))

    await _until(all_parked, 15)


async def _deliver(sender: Daemon, owner: Daemon, run_id: str) -> float:
    """Signal ``run_id`` through ``sender``; seconds until the owner reports it completed."""
    async with sender.client() as s, owner.client() as o:
        start = time.monotonic()
        await s.signal(run_id, "go", {"via": "notify"})
        done = await o.wait(run_id, timeout=POLL * 2)
        took = time.monotonic() - start
    assert done["status"] == "completed" and done["output"] == {"payload": {"via": "notify"}}
    return took


async def test_a_signal_to_the_other_daemon_reaches_the_owner_within_100ms(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    a = _daemon(make_daemon, pg_url)
    b = _daemon(make_daemon, pg_url)
    a_id = await _daemon_id(a)
    runs = [f"p{i}" for i in range(SIGNALS)]
    await _parked_on(a, pg_url, a_id, runs)
    took = sorted([await _deliver(b, a, run_id) for run_id in runs])
    p50 = statistics.median(took)
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
    print(f"\ncross-daemon signal -> owner completion over {len(took)}: "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms")
    assert p99 < BOUND < POLL, took


async def test_a_killed_listen_connection_is_reestablished_and_delivery_continues(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    a = _daemon(make_daemon, pg_url)
    b = _daemon(make_daemon, pg_url)
    a_id = await _daemon_id(a)
    await _parked_on(a, pg_url, a_id, ["before", "after"])
    assert await _deliver(b, a, "before") < BOUND

    name = application_name(a_id)
    listeners = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
    (old,) = [r[0] for r in await _fetch(pg_url, listeners, name)]
    assert await _fetch(pg_url, "SELECT pg_terminate_backend($1)", old) == [(True,)]

    async def replaced() -> bool:
        pids = [r[0] for r in await _fetch(pg_url, listeners, name)]
        return len(pids) == 1 and pids[0] != old

    await _until(replaced, POLL / 2, step=0.02)  # reconnected by backoff, not by the poll
    assert await _deliver(b, a, "after") < BOUND
    assert set((await _statuses(a, ["before", "after"])).values()) == {"completed"}



async def test_a_pause_sent_to_the_other_daemon_holds_the_run_on_its_owner(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    """Paused through the daemon that does not own it while parked on a sleep: the owner keeps
    the sleep's firing for the resume instead of running the next step; resumed through the
    other daemon too, it finishes on the owner without waiting for the poll."""
    a = _daemon(make_daemon, pg_url)
    b = _daemon(make_daemon, pg_url)
    a_id = await _daemon_id(a)
    async with a.client() as c:
        await c.submit("e2e-sleep", {"seconds": 0.5}, run_id="nap")

    async def parked() -> bool:
        return ((await _statuses(a, ["nap"]))["nap"] == "waiting"
                and await _owned_by(pg_url, ["nap"], a_id))

    await _until(parked, 10)
    async with b.client() as s:
        assert (await s.pause("nap"))["status"] == "paused"
    await asyncio.sleep(1.0)  # the sleep came due meanwhile
    assert (await _statuses(a, ["nap"]))["nap"] == "paused"
    assert await _fetch(pg_url, "SELECT count(*) FROM steps WHERE step_id = 'after'") == [(0,)]
    async with b.client() as s, a.client() as o:
        start = time.monotonic()
        await s.resume("nap")
        done = await o.wait("nap", timeout=POLL * 2)
        took = time.monotonic() - start
    assert done["status"] == "completed" and took < BOUND, (done, took)
