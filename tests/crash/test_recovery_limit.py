"""A run whose replay keeps killing the daemon is failed after daemon.max_recoveries tries."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.client import Client, DaemonUnreachable
from tests.crash.daemon_process import DaemonProcess
from tests.crash.test_restart import HERE

pytestmark = pytest.mark.slow


async def test_poison_run_fails_with_recovery_limit_and_the_daemon_comes_up(
    tmp_path: Path,
) -> None:
    daemon = DaemonProcess(tmp_path, modules=["tests.crash.crash_workflows"],
                           paths=[HERE.parents[1]], extra="max_recoveries = 2")
    daemon.start()
    ledger = tmp_path / "ledger"
    async with Client.connect(daemon.socket) as c:
        # A bystander parked on an event before the poison arrives: parked runs are not
        # restarted at start-up, so the crash loop must not touch it. (A bystander that is
        # *moving* while a replay kills the daemon is charged too: docs/reliability.md.)
        parked = (await c.submit("crash-event", {"ledger": str(ledger), "key": "k"}))["run_id"]
        for _ in range(100):
            if (await c.get(parked))["status"] == "waiting":
                break
            await asyncio.sleep(0.02)
        poisoned = (await c.submit("crash-poison", {}))["run_id"]
    assert daemon.proc is not None
    await asyncio.to_thread(daemon.proc.wait, 10)  # the poison step killed it

    # Each start recovers the poisoned run, whose step kills the daemon again (before or just
    # after daemon.ready), until max_recoveries is spent and the run is failed instead.
    starts = 0
    run: dict[str, object] | None = None
    while run is None:
        starts += 1
        assert starts <= 5, daemon.tail()
        try:
            daemon.start()
            async with Client.connect(daemon.socket) as c:
                run = await c.wait(poisoned, timeout=10)
        except (RuntimeError, DaemonUnreachable, ConnectionError, OSError):
            await asyncio.to_thread(daemon.proc.wait, 10)
    try:
        assert run["status"] == "failed"
        assert run["error"]["code"] == "RECOVERY_LIMIT"  # type: ignore[index]
        assert starts == 3  # two recoveries allowed, the third start refuses
        async with Client.connect(daemon.socket) as c:
            await c.send_event("crash.go", {"key": "k"})
            assert (await c.wait(parked, timeout=10))["status"] == "completed"
            fresh = (await c.submit("crash-ok", {}))["run_id"]
            assert (await c.wait(fresh, timeout=10))["status"] == "completed"
    finally:
        assert daemon.stop() == 0, daemon.tail()
