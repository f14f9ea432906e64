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

import asyncpg
import pytest

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.slow

LEASE = 1.0  # renewed every third of it


def on_postgres(make_daemon: Callable[..., Daemon], url: str, **overrides: Any) -> Daemon:
    daemon = dict(overrides.pop("daemon", {}))
    daemon.setdefault("lease", f"{LEASE}s")
    return make_daemon(storage={"url": url}, daemon=daemon, **overrides)


async def _fetch(url: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


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
    assert await _fetch(pg_url, "SELECT daemon_id FROM daemons") == []


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
        before = await _fetch(pg_url, "SELECT status, journal_seq, updated_at FROM runs")
        (row,) = await _fetch(pg_url, "SELECT lease_until > extract(epoch FROM now()) "
                                      "FROM daemons")
        assert row[0] is False  # the database clock says its lease ran out
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    code = _wait_exit(d, 10)
    log = d.new_log()
    assert code == 70, log[-3000:]
    assert "\"daemon.lease_lost\"" in log and "\"daemon.fail_stop\"" in log
    # Nothing it wrote after waking: the run is where it was when the lease ran out.
    assert await _fetch(pg_url, "SELECT status, journal_seq, updated_at FROM runs") == before
    assert [r[0] for r in before] == ["waiting"]
