"""kill -9 a real daemon mid-run, restart it, and check the SPEC §10 promises."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client
from tests.crash.daemon_process import DaemonProcess

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path, modules=["tests.crash.crash_workflows"],
                         paths=[HERE.parents[1]])
    proc.start()
    yield proc
    code = proc.stop()
    assert code == 0, proc.tail()


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[Client]:
    async with Client.connect(daemon.socket) as c:
        yield c


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def ledger_lines(path: Path) -> list[tuple[str, str, int, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        run_id, step_id, attempt, label = line.split()
        rows.append((run_id, step_id, int(attempt), label))
    return rows


async def status(c: Client, run_id: str) -> str:
    return str((await c.get(run_id))["status"])


async def test_runs_survive_kill_minus_9_at_every_kind_of_point(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    await kill_and_restart_scenario(daemon, tmp_path)


async def kill_and_restart_scenario(daemon: DaemonProcess, tmp_path: Path) -> None:
    """kill -9 mid-step, mid-sleep, on an event, in a backoff and on a child; restart; check
    SPEC §10. Raises AssertionError on any violation (the mutant tests rely on that)."""
    ledger = tmp_path / "ledger.txt"
    marker = tmp_path / "unblock"
    base = {"ledger": str(ledger)}
    async with Client.connect(daemon.socket) as c:
        mid = (await c.submit("crash-mid-step", {**base, "marker": str(marker)}))["run_id"]
        sleeper = (await c.submit("crash-sleep", {**base, "sleep": 1.0}))["run_id"]
        waiter = (await c.submit("crash-event", {**base, "key": "w"}))["run_id"]
        retrier = (await c.submit("crash-retry", base))["run_id"]
        parent = (await c.submit("crash-parent", {**base, "key": "p"}))["run_id"]
        await until(lambda: any(r[1] == "blocking" for r in ledger_lines(ledger)), "mid-step")
        for run_id in (sleeper, waiter, retrier, parent):
            await until(lambda r=run_id: _is(c, r, "waiting"), f"{run_id} waiting")
        child = (await c.list(workflow_id="crash-child"))["runs"][0]["run_id"]
        await until(lambda: _is(c, child, "waiting"), "child waiting")
        sleep_due = _due(await c.get(sleeper), "sleep:0")
        retry_due = _due(await c.get(retrier), "retry:flaky:1")

    daemon.kill9()
    # Stay down until both timers are due: they must fire at start, not be lost.
    while time.time() < max(sleep_due, retry_due) + 0.05:
        await asyncio.sleep(0.05)
    marker.touch()
    daemon.start()

    async with Client.connect(daemon.socket) as c:
        assert (await c.send_event("crash.go", {"key": "w", "n": 1}))["resolved"] == 1
        assert (await c.send_event("crash.child", {"key": "p", "n": 2}))["resolved"] == 1
        final = {r: await c.wait(r, timeout=10) for r in (mid, sleeper, waiter, retrier, parent)}

    assert {r: f["status"] for r, f in final.items()} == dict.fromkeys(final, "completed")
    assert final[mid]["output"] == ["before", "unblocked", "after"]
    assert final[sleeper]["output"] == "after"
    assert final[waiter]["output"] == {"key": "w", "n": 1}
    assert final[retrier]["output"] == "second attempt"
    assert final[parent]["output"] == {"key": "p", "n": 2}

    counts = Counter(ledger_lines(ledger))
    # The step in flight at the kill ran once more (at-least-once); nothing completed re-ran.
    assert counts[(mid, "blocking", 1, "begin")] == 2
    assert counts[(mid, "blocking", 1, "end")] == 1
    repeated = {k: n for k, n in counts.items() if n > 1 and k != (mid, "blocking", 1, "begin")}
    assert repeated == {}
    attempts = [a for run, step, a, _ in ledger_lines(ledger) if run == retrier]
    assert attempts == [1, 2]


async def _is(c: Client, run_id: str, wanted: str) -> bool:
    return await status(c, run_id) == wanted


def _due(run: dict[str, Any], wp_id: str) -> float:
    [wp] = [w for w in run["waitpoints"] if w["waitpoint_id"] == wp_id]
    return float(wp["due_at"])


async def test_sigterm_then_restart_resumes_a_sleeping_run(daemon: DaemonProcess) -> None:
    async with Client.connect(daemon.socket) as c:
        run_id = (await c.submit("crash-sleep", {"ledger": str(daemon.workdir / "l"),
                                                  "sleep": 0.5}))["run_id"]
        await until(lambda: _is(c, run_id, "waiting"), "waiting")
    assert daemon.stop() == 0
    daemon.start()
    async with Client.connect(daemon.socket) as c:
        assert (await c.wait(run_id, timeout=10))["status"] == "completed"
