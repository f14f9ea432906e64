"""Schedules through a real daemon (SPEC §2a): a code-declared schedule firing every second, a
fire due while the daemon is dead (``kill -9``, and a crash right after its timer fired) made
exactly once after restart, and the ``wf schedules`` / ``wf schedule ...`` commands."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import pytest

from orchestrator.client import Client, RemoteError
from runtime.schedules import run_id
from tests.e2e.conftest import E2E_DIR, Daemon, wait_until

pytestmark = pytest.mark.slow

REPO = E2E_DIR.parents[1]
ECHO_ONLY = {"paths": [str(E2E_DIR)], "modules": ["schedule_workflows"]}
WITH_TICK = {"paths": [str(E2E_DIR)], "modules": ["schedule_workflows", "schedule_tick"]}


def due_of(rid: str) -> float:
    """The due time in ``sched:<name>:<ISO-8601 UTC>`` (names here have no colon)."""
    return datetime.fromisoformat(rid.split(":", 2)[2].replace("Z", "+00:00")).timestamp()


async def completed(client: Client, rid: str, timeout: float = 10.0) -> dict[str, Any]:
    """The run once completed; it may not exist yet (a fire at start is done after ready)."""
    async def check() -> dict[str, Any] | None:
        try:
            run: dict[str, Any] = await client.get(rid)
        except RemoteError as exc:
            if exc.code != "NOT_FOUND":
                raise
            return None
        return run if run["status"] == "completed" else None

    found: dict[str, Any] = await wait_until(check, timeout=timeout, what=f"{rid} completed")
    return found


async def schedule_runs(client: Client, workflow_id: str) -> list[dict[str, Any]]:
    runs = (await client.list(workflow_id=workflow_id, limit=1000))["runs"]
    return sorted((r for r in runs if r["triggered_by"] == "schedule"),
                  key=lambda r: r["run_id"])


async def listed(client: Client, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        s for s in (await client.schedules())["schedules"] if s["name"] == name]
    assert found, f"no schedule {name!r}"
    return found[0]


def start_with_crash_point(daemon: Daemon, point: str) -> subprocess.Popen[bytes]:
    """Start the daemon through the test launcher, armed to SIGKILL itself at ``point``."""
    daemon._log_offset = daemon.log_path.stat().st_size if daemon.log_path.exists() else 0
    env = {**os.environ, "WF_CRASH_AT": point, "PYTHONPATH": str(REPO)}
    err = (daemon.root / "launcher.stderr").open("wb")
    with err:
        daemon.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.launch", "daemon",
             "--config", str(daemon.config_path)],
            stdout=subprocess.DEVNULL, stderr=err, cwd=daemon.root, env=env,
        )
    daemon.wait_ready()
    return daemon.proc


async def test_a_code_declared_schedule_fires_every_second_through_the_daemon(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workflows=WITH_TICK)
    async with daemon.client() as client:
        async def three_done() -> list[dict[str, Any]] | None:
            runs = [r for r in await schedule_runs(client, "sched-tick")
                    if r["status"] == "completed"]
            return runs if len(runs) >= 3 else None

        runs = await wait_until(three_done, timeout=15, what="three scheduled runs")
        ids = [r["run_id"] for r in runs]
        assert all(i.startswith("sched:every-second:") for i in ids)
        dues = [due_of(i) for i in ids]
        assert all(b - a >= 1 and (b - a) % 1 == 0 for a, b in itertools.pairwise(dues))
        assert runs[0]["input"] == {"tick": True} and runs[0]["output"] == {
            "tick": {"tick": True}}
        schedule = await listed(client, "every-second")
        assert (schedule["source"], schedule["rule"]) == ("code", "every 1s")
        assert schedule["fired"] >= 3 and schedule["next_fire_at"] is not None


async def test_kill_9_while_a_fire_is_due_makes_exactly_one_run_for_it_after_restart(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workflows=ECHO_ONLY)
    async with daemon.client() as client:
        made = await client.schedule_create("due-while-dead", "sched-echo",
                                            at=time.time() + 1.5, input={"n": 1})
    due = made["next_due_at"]
    daemon.kill()
    await asyncio.sleep(max(0.0, due - time.time()) + 0.5)
    daemon.start()
    expected = run_id("due-while-dead", due)
    async with daemon.client() as client:
        done = await completed(client, expected)
        assert done["output"] == {"echo": {"n": 1}}
        assert [r["run_id"] for r in await schedule_runs(client, "sched-echo")] == [expected]
        schedule = await listed(client, "due-while-dead")
        assert (schedule["fired"], schedule["missed"], schedule["next_fire_at"]) == (1, 0, None)
    daemon.restart()
    async with daemon.client() as client:
        assert [r["run_id"] for r in await schedule_runs(client, "sched-echo")] == [expected]


async def test_kill_9_while_a_cron_fire_is_due_makes_exactly_one_run_for_that_fire(
    make_daemon: Callable[..., Daemon],
) -> None:
    """The same through a cron rule (its finest grain is a minute: this waits for the next
    minute's fire, up to ~60 s)."""
    daemon = make_daemon(workflows=ECHO_ONLY)
    if 60 - time.time() % 60 < 3:  # too close to the minute: the fire could beat the kill
        await asyncio.sleep(60 - time.time() % 60 + 0.2)
    async with daemon.client() as client:
        made = await client.schedule_create("cron-while-dead", "sched-echo", cron="* * * * *",
                                            input={"n": 2})
    due = made["next_due_at"]
    assert due % 60 == 0 and due - time.time() > 1
    daemon.kill()
    await asyncio.sleep(max(0.0, due - time.time()) + 0.5)
    daemon.start()
    expected = run_id("cron-while-dead", due)
    async with daemon.client() as client:
        done = await completed(client, expected)
        assert (done["output"], done["triggered_by"]) == ({"echo": {"n": 2}}, "schedule")
        made_runs = [r["run_id"] for r in await schedule_runs(client, "sched-echo")]
        assert made_runs == [expected]
        schedule = await listed(client, "cron-while-dead")
        assert (schedule["fired"], schedule["missed"]) == (1, 0)
        assert schedule["next_due_at"] == due + 60
        await client.schedule_delete("cron-while-dead")  # no later fire during the restart
    daemon.kill()
    daemon.start()
    async with daemon.client() as client:
        assert [r["run_id"] for r in await schedule_runs(client, "sched-echo")] == [expected]


async def test_a_crash_right_after_a_schedule_timer_fired_loses_no_fire_and_doubles_none(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Killed after the timer was claimed, before the fire committed: at restart the fire
    happens at once (not after the timer's lease), once."""
    daemon = make_daemon(workflows=ECHO_ONLY, start=False)
    proc = start_with_crash_point(daemon, "timer.fired:1")
    async with daemon.client() as client:
        made = await client.schedule_create("crashy", "sched-echo", at=time.time() + 1.0)
    assert proc.wait(timeout=15) == -9
    daemon.proc = None
    assert "crash point timer.fired" in (daemon.root / "launcher.stderr").read_text()
    started = time.monotonic()
    daemon.start()
    expected = run_id("crashy", made["next_due_at"])
    async with daemon.client() as client:
        await completed(client, expected, timeout=20)
        assert time.monotonic() - started < 8  # the 10 s lease was not waited out
        assert [r["run_id"] for r in await schedule_runs(client, "sched-echo")] == [expected]


def wf(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon.cli(*args)


def wf_json(daemon: Daemon, *args: str) -> Any:
    proc = daemon.cli("--json", *args)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


async def test_wf_schedules_and_the_schedule_commands(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workflows=ECHO_ONLY)
    made = await asyncio.to_thread(
        wf_json, daemon, "schedule", "create", "nightly", "--workflow", "sched-echo",
        "--cron", "0 3 * * *", "--timezone", "Europe/Paris", "--input", '{"a": 1}')
    assert (made["rule"], made["timezone"], made["input"]) == (
        "cron 0 3 * * *", "Europe/Paris", {"a": 1})

    table = await asyncio.to_thread(wf, daemon, "schedules")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "WORKFLOW", "RULE", "TIMEZONE", "NEXT_FIRE", "LAST_FIRE",
                              "PAUSED", "SKIPPED", "MISSED"]
    assert row.split()[:2] == ["nightly", "sched-echo"]
    assert "cron 0 3 * * *" in row and "Europe/Paris" in row
    assert row.split()[-3:] == ["no", "0", "0"]

    assert (await asyncio.to_thread(wf, daemon, "schedule", "pause", "nightly")).returncode == 0
    paused_row = (await asyncio.to_thread(wf, daemon, "schedules")).stdout.splitlines()[1]
    assert paused_row.split()[-3:] == ["yes", "0", "0"]

    triggered = await asyncio.to_thread(wf_json, daemon, "schedule", "trigger", "nightly")
    (run,) = triggered["runs"]
    assert run["run_id"].startswith("sched:nightly:")
    backfilled = await asyncio.to_thread(
        wf, daemon, "schedule", "backfill", "nightly", "--start", "2026-01-01T00:00:00Z",
        "--end", "2026-01-03T00:00:00Z")
    assert backfilled.returncode == 0, backfilled.stderr
    assert "sched:nightly:2026-01-01T02:00:00Z" in backfilled.stdout  # 03:00 in Paris
    assert "sched:nightly:2026-01-02T02:00:00Z" in backfilled.stdout

    assert (await asyncio.to_thread(wf, daemon, "schedule", "resume", "nightly")).returncode == 0
    deleted = await asyncio.to_thread(wf_json, daemon, "schedule", "delete", "nightly")
    assert deleted == {"deleted": True}
    again = await asyncio.to_thread(wf, daemon, "schedule", "delete", "nightly")
    assert again.returncode == 1 and "NOT_FOUND" in again.stderr
    bad = await asyncio.to_thread(wf, daemon, "schedule", "create", "bad", "--workflow",
                                  "sched-echo", "--cron", "0 0 30 2 *")
    assert bad.returncode == 1 and "INVALID_PARAMS" in bad.stderr and "cron" in bad.stderr
    assert (await asyncio.to_thread(wf, daemon, "schedules")).stdout.strip() == "no schedules"
