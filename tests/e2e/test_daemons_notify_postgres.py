"""Real ``wf daemon`` processes on a throwaway PostgreSQL (SPEC §13): a signal, token, event,
cancel, pause or resume sent to a daemon that does not own the run reaches its owner by
LISTEN/NOTIFY, well within the poll interval (set to 5 s here, so the poll cannot be what
delivered it); ``wait``, ``watch`` and ``changes`` on the daemon that does not own the run see
its status changes as they happen; a LISTEN connection the server killed is re-established and
delivery goes on."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from storage.postgres.notify import application_name
from tests.e2e.conftest import Daemon
from tests.e2e.test_daemons_postgres import _daemon_id, _owned_by, _statuses, _until
from tests.pg import fetch

pytestmark = pytest.mark.slow

POLL = 5.0  # the fallback poll: anything delivered much faster came by NOTIFY
BOUND = 0.5  # asserted per-signal bound, generous on a shared 2-core machine (target: 0.1 s)
SIGNALS = 50


def _daemon(make_daemon: Callable[..., Daemon], url: str) -> Daemon:
    # A long lease keeps the cluster loop's own pace out of it; the poll is explicit.
    return make_daemon(storage={"url": url}, daemon={"lease": "30s", "poll": f"{POLL}s"})


async def _parked_on(owner: Daemon, url: str, owner_id: str, runs: list[str],
                     workflow: str = "e2e-signal", inputs: Callable[[str], Any] = lambda _r: None,
                     ) -> None:
    async with owner.client() as c:
        for run_id in runs:
            await c.submit(workflow, inputs(run_id), run_id=run_id)

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


def _percentiles(what: str, took: list[float]) -> tuple[float, float]:
    took = sorted(took)
    p50 = statistics.median(took)
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
    print(f"\n{what} over {len(took)}: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {took[-1] * 1000:.1f} ms")
    return p50, p99


async def test_a_signal_to_the_other_daemon_reaches_the_owner_within_100ms(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    a = _daemon(make_daemon, pg_url)
    b = _daemon(make_daemon, pg_url)
    a_id = await _daemon_id(a)
    runs = [f"p{i}" for i in range(SIGNALS)]
    await _parked_on(a, pg_url, a_id, runs)
    took = [await _deliver(b, a, run_id) for run_id in runs]
    _p50, p99 = _percentiles("cross-daemon signal -> owner completion", took)
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
    (old,) = [r[0] for r in await fetch(pg_url, listeners, name)]
    assert await fetch(pg_url, "SELECT pg_terminate_backend($1)", old) == [(True,)]

    async def replaced() -> bool:
        pids = [r[0] for r in await fetch(pg_url, listeners, name)]
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
    assert await fetch(pg_url, "SELECT count(*) FROM steps WHERE step_id = 'after'") == [(0,)]
    async with b.client() as s, a.client() as o:
        start = time.monotonic()
        await s.resume("nap")
        done = await o.wait("nap", timeout=POLL * 2)
        took = time.monotonic() - start
    assert done["status"] == "completed" and took < BOUND, (done, took)


EACH = 13  # deliveries per kind below: 52 in all


async def test_tokens_events_cancels_and_resumes_sent_to_the_other_daemon_reach_the_owner(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    """Each timed from the call on the daemon that does not own the run until the run's end is
    seen: on the owner (token, event, resume), or on the caller itself (cancel answers once
    the run ended on its owner, which it learns from the owner's announcement)."""
    a = _daemon(make_daemon, pg_url)
    b = _daemon(make_daemon, pg_url)
    a_id = await _daemon_id(a)
    tokens = [f"t{i}" for i in range(EACH)]
    events = [f"e{i}" for i in range(EACH)]
    cancels = [f"c{i}" for i in range(EACH)]
    pauses = [f"p{i}" for i in range(EACH)]
    await _parked_on(a, pg_url, a_id, tokens, "e2e-token")
    await _parked_on(a, pg_url, a_id, events, "e2e-event", lambda r: {"type": f"ev.{r}"})
    await _parked_on(a, pg_url, a_id, [*cancels, *pauses])
    took: dict[str, list[float]] = {"token": [], "event": [], "cancel": [], "resume": []}
    async with a.client() as o, b.client() as s:

        async def timed(kind: str, send: Awaitable[Any], run_id: str | None,
                        expect: str = "completed") -> None:
            start = time.monotonic()
            answer = await send
            done = answer if run_id is None else await o.wait(run_id, timeout=POLL * 2)
            took[kind].append(time.monotonic() - start)
            assert done["status"] == expect, done

        for run_id in tokens:
            token = (await o.get(run_id))["metadata"]["token"]
            await timed("token", s.complete_token(token, run_id), run_id)
        for run_id in events:
            await timed("event", s.send_event(f"ev.{run_id}", {"n": 1}), run_id)
        for run_id in cancels:
            await timed("cancel", s.cancel(run_id), None, "cancelled")
        for run_id in pauses:
            assert (await s.pause(run_id))["status"] == "paused"
            await s.signal(run_id, "go", run_id)  # recorded, kept for the resume
            await timed("resume", s.resume(run_id), run_id)
            assert (await o.get(run_id))["output"] == {"payload": run_id}
    everything = [t for kind in took.values() for t in kind]
    for kind, times in took.items():
        _percentiles(f"cross-daemon {kind}", times)
    _percentiles("cross-daemon token/event/cancel/resume", everything)
    # One delivery may exceed the bound on a loaded machine, but none may take the e2e
    # daemons' shutdown_grace (2 s): a cancel that waited it out was a defect (docs/
    # reliability.md, "a cancel through the other daemon once took 2 s"; fixed).
    rest = sorted(everything)[:-1]
    _p50, p99 = _percentiles("cross-daemon deliveries but the slowest", rest)
    assert len(everything) >= 50 and p99 < BOUND < POLL and max(everything) < 1.9, took


async def test_wait_watch_and_changes_on_the_other_daemon_see_the_run_end(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    """The run is driven by A and signalled there; B, which never touches it, answers
    ``wait`` as soon as it ended, ends its ``watch`` and shows the change in ``changes``."""
    a = _daemon(make_daemon, pg_url)
    b = _daemon(make_daemon, pg_url)
    a_id = await _daemon_id(a)
    await _parked_on(a, pg_url, a_id, ["w"])
    watched: list[str] = []
    changed: list[str] = []
    async with b.client() as watcher, b.client() as follower, b.client() as waiter:

        async def watch() -> None:
            async for record in watcher.watch("w"):
                watched.append(record["status"])

        async def follow() -> None:
            async for change in follower.changes():
                if change.get("run_id") == "w":
                    changed.append(change["status"])
                    if change["status"] == "completed":
                        return

        tasks = [asyncio.create_task(watch()), asyncio.create_task(follow())]
        await _until(lambda: _true(watched), 5, step=0.02)
        waiting = asyncio.create_task(waiter.wait("w", timeout=POLL * 2))
        await asyncio.sleep(0.2)  # all three are listening on B
        async with a.client() as o:
            start = time.monotonic()
            await o.signal("w", "go", 1)
        done = await waiting
        took = time.monotonic() - start
        await asyncio.wait_for(asyncio.gather(*tasks), BOUND)
    print(f"\nwait on the non-owner returned {took * 1000:.1f} ms after the signal")
    assert done["status"] == "completed" and took < BOUND, (done, took)
    assert watched[0] == "waiting" and watched[-1] == "completed", watched
    assert changed[-1] == "completed", changed


async def _true(items: list[Any]) -> bool:
    return bool(items)


async def test_a_running_run_paused_through_the_other_daemon_is_held_after_its_step(
    make_daemon: Callable[..., Daemon], pg_url: str, tmp_path: Path
) -> None:
    """Paused through B while its step runs on A: B answers once A held it (``paused``,
    learned from A's announcement), the next step does not start; resumed through B, it goes
    on from where it was held and completes."""
    a = _daemon(make_daemon, pg_url)
    b = _daemon(make_daemon, pg_url)
    a_id = await _daemon_id(a)
    marker, gate, ledger = (tmp_path / "started", tmp_path / "gate", tmp_path / "ledger")
    async with a.client() as c:
        await c.submit("e2e-started-gated", {"marker": str(marker), "gate": str(gate),
                                     "ledger": str(ledger)}, run_id="busy")
    await _until(lambda: _exists(marker), 10)
    assert await _owned_by(pg_url, ["busy"], a_id)
    async with b.client() as s:
        pausing = asyncio.create_task(s.pause("busy"))
        await asyncio.sleep(0.3)
        gate.write_text("go", encoding="utf-8")
        start = time.monotonic()
        paused = await pausing
        took = time.monotonic() - start
        assert paused["status"] == "paused" and took < BOUND, (paused, took)
        await asyncio.sleep(0.5)
        assert (await _statuses(a, ["busy"]))["busy"] == "paused"
        assert ledger.read_text(encoding="utf-8").split() == ["first", "gated"]
        await s.resume("busy")
        done = await s.wait("busy", timeout=POLL * 2)
    assert done["status"] == "completed", done
    assert ledger.read_text(encoding="utf-8").split() == ["first", "gated", "after"]


async def _exists(path: Path) -> bool:
    return path.exists()
