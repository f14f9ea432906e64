"""Real ``wf daemon`` processes on a throwaway PostgreSQL (SPEC §13): the daemon registry
(``wf daemons``), leases renewed by the database clock, and fencing — a daemon stopped
(SIGSTOP) past its lease, then continued, writes nothing more and stops itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Daemon
from tests.pg import fetch

pytestmark = pytest.mark.slow

LEASE = 1.0  # renewed every third of it


def on_postgres(make_daemon: Callable[..., Daemon], url: str, **overrides: Any) -> Daemon:
    daemon = dict(overrides.pop("daemon", {}))
    daemon.setdefault("lease", f"{LEASE}s")
    return make_daemon(storage={"url": url}, daemon=daemon, **overrides)


def _wait_exit(d: Daemon, timeout: float) -> int:
    assert d.proc is not None
    deadline = time.monotonic() + timeout
    while d.proc.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"daemon still running {timeout}s later\n{d.new_log()[-3000:]}")
        time.sleep(0.05)
    code = d.proc.returncode
    d.proc = None
    return code


async def test_wf_daemons_lists_the_live_daemon_and_a_clean_stop_retires_it(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    d = on_postgres(make_daemon, pg_url, http={"listen": "127.0.0.1:0"})
    listed = d.cli("--json", "daemons")
    assert listed.returncode == 0, listed.stderr
    (me,) = json.loads(listed.stdout)["daemons"]
    assert me["live"] and me["this"] and me["pid"] == d.proc.pid  # type: ignore[union-attr]
    assert me["name"].endswith(f":{me['pid']}") and me["socket"] == str(d.socket)
    assert 0 < me["lease_until"] - me["renewed_at"] <= LEASE
    human = d.cli("daemons")
    assert human.returncode == 0 and "live" in human.stdout and " *" in human.stdout
    # Renewed by the database clock every third of the lease: it moves while we watch.
    first = me["lease_until"]
    await asyncio.sleep(LEASE)
    (again,) = json.loads(d.cli("--json", "daemons").stdout)["daemons"]
    assert again["lease_until"] > first and again["http"].startswith("http://127.0.0.1:")
    d.stop_cleanly()
    assert await fetch(pg_url, "SELECT daemon_id FROM daemons") == []


async def test_a_daemon_stopped_past_its_lease_writes_nothing_and_stops_itself(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    d = on_postgres(make_daemon, pg_url)
    async with d.client() as c:
        await c.submit("e2e-sleep", {"seconds": 0.6}, run_id="nap")
        while (await c.get("nap"))["status"] != "waiting":
            await asyncio.sleep(0.02)
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGSTOP)  # the timer comes due while it is stopped
    try:
        await asyncio.sleep(LEASE * 2)
        before = await fetch(pg_url, "SELECT status, journal_seq, updated_at FROM runs")
        (row,) = await fetch(pg_url, "SELECT lease_until > extract(epoch FROM now()) "
                                      "FROM daemons")
        assert row[0] is False  # the database clock says its lease ran out
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    code = _wait_exit(d, 10)
    log = d.new_log()
    assert code == 70, log[-3000:]
    assert "\"daemon.lease_lost\"" in log and "\"daemon.fail_stop\"" in log
    # Nothing it wrote after waking: the run is where it was when the lease ran out.
    assert await fetch(pg_url, "SELECT status, journal_seq, updated_at FROM runs") == before
    assert [r[0] for r in before] == ["waiting"]


async def _owners(url: str) -> dict[str, str | None]:
    return {r[0]: r[1] for r in await fetch(url, "SELECT run_id, owner FROM runs")}


async def _daemon_id(d: Daemon) -> str:
    (me,) = [x for x in json.loads(d.cli("--json", "daemons").stdout)["daemons"] if x["this"]]
    return str(me["daemon_id"])


async def _until(what: Callable[[], Any], timeout: float, step: float = 0.05) -> float:
    """Poll the coroutine function ``what`` until it returns truthy; the seconds it took."""
    start = time.monotonic()
    while not await what():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - start


async def _statuses(d: Daemon, run_ids: list[str]) -> dict[str, str]:
    async with d.client() as c:
        return {r: (await c.get(r))["status"] for r in run_ids}


async def test_runs_of_a_killed_daemon_complete_on_the_other(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    """kill -9 of one daemon: within lease + 5 s the other adopts its sleeping and parked
    runs; the sleeps fire there and a signal sent to it resumes the parked run."""
    a = on_postgres(make_daemon, pg_url)
    a_id = await _daemon_id(a)
    naps = [f"nap-{i}" for i in range(3)]
    async with a.client() as c:
        for run_id in naps:
            await c.submit("e2e-sleep", {"seconds": 4.0}, run_id=run_id)
        await c.submit("e2e-signal", None, run_id="parked")
    runs = [*naps, "parked"]

    async def all_waiting_on_a() -> bool:
        owners = await _owners(pg_url)
        return set((await _statuses(a, runs)).values()) == {"waiting"} and all(
            owners[r] == a_id for r in runs)

    await _until(all_waiting_on_a, 10)
    # Started now, so that it cannot claim one of them before a's actor does.
    b = on_postgres(make_daemon, pg_url)
    b_id = await _daemon_id(b)
    a.kill()
    adopted_in = await _until(  # SPEC §13: lease + 5 s
        lambda: _owned_by(pg_url, runs, b_id, or_ended=True), LEASE + 5)
    assert adopted_in <= LEASE + 5
    async with b.client() as c:
        await c.signal("parked", "go", {"n": 1})
        for run_id in runs:
            done = await c.wait(run_id, timeout=10)
            assert done["status"] == "completed", done
        assert (await c.get("parked"))["output"] == {"payload": {"n": 1}}
    # Each run's step ran once: the takeover re-ran nothing that had been recorded.
    attempts = await _step_attempts(pg_url)
    assert {r[0]: r[1] for r in attempts} == {r: 1 for r in naps}
    assert a_id not in [d["daemon_id"] for d in
                        json.loads(b.cli("--json", "daemons").stdout)["daemons"]]


async def _step_attempts(url: str) -> list[Any]:
    """(run, attempt) of each run's one step, "after": 1 when it ran once."""
    return await fetch(url, "SELECT r.run_id, s.attempt FROM steps s JOIN runs r "
                             "ON r.number = s.run_no WHERE s.step_id = 'after'")


async def _owned_by(url: str, runs: list[str], daemon_id: str, *, or_ended: bool = False
                    ) -> bool:
    """Every run is ``daemon_id``'s; with ``or_ended`` an ended run counts too (an end clears
    the owner: a run adopted and finished at once is never seen owned)."""
    found = await fetch(url, "SELECT run_id, owner, status FROM runs")
    owners = {r[0]: (r[1], r[2]) for r in found}
    return all(owners[r][0] == daemon_id
               or (or_ended and owners[r][1] in ("completed", "failed", "cancelled"))
               for r in runs)


async def test_two_live_daemons_share_timers_and_each_fires_once(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    a = on_postgres(make_daemon, pg_url)
    b = on_postgres(make_daemon, pg_url)
    runs = []
    for i, d in enumerate((a, b, a, b, a, b)):
        async with d.client() as c:
            await c.submit("e2e-sleep", {"seconds": 0.5}, run_id=f"s{i}")
        runs.append(f"s{i}")

    async def all_done() -> bool:
        return set((await _statuses(b, runs)).values()) == {"completed"}

    await _until(all_done, 15)
    attempts = await _step_attempts(pg_url)
    assert {r[0]: r[1] for r in attempts} == {r: 1 for r in runs}
    assert await fetch(pg_url, "SELECT count(*) FROM timers") == [(0,)]


async def test_a_stopped_daemons_runs_finish_elsewhere_and_it_wakes_to_write_nothing(
    make_daemon: Callable[..., Daemon], pg_url: str
) -> None:
    """SIGSTOP past the lease: the other daemon adopts the run and finishes it; SIGCONT: the
    stopped daemon writes nothing (its timer was due, its batch is fenced) and exits."""
    a = on_postgres(make_daemon, pg_url)
    b = on_postgres(make_daemon, pg_url)
    a_id, b_id = await _daemon_id(a), await _daemon_id(b)
    async with a.client() as c:
        await c.submit("e2e-sleep", {"seconds": 1.0}, run_id="nap")
    await _until(lambda: _owned_by(pg_url, ["nap"], a_id), 10)
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        await _until(lambda: _owned_by(pg_url, ["nap"], b_id, or_ended=True), LEASE + 5)
        async with b.client() as c:
            assert (await c.wait("nap", timeout=10))["status"] == "completed"
        after = await fetch(pg_url, "SELECT status, journal_seq, updated_at, epoch FROM runs")
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    code = _wait_exit(a, 10)
    assert code == 70 and '"daemon.lease_lost"' in a.new_log()
    assert await fetch(pg_url, "SELECT status, journal_seq, updated_at, epoch FROM runs") == after
    assert await _step_attempts(pg_url) == [("nap", 1)]
