"""Run operations through a real daemon and the ``wf`` CLI (SPEC §6): pause across ``kill -9``,
cancel of runs in every state (with and without compensation, a parent with its child), a
cancel acknowledged just before a ``kill -9``, retry in both modes, bulk operations by filter
(``--dry-run``, confirmation, ``--yes``), pausing a workflow, and the ``changes`` feed.

The workflows are :mod:`tests.e2e.e2e_workflows` (loaded by the daemon); a run caught mid-step
waits for a gate file the test creates, and steps note themselves in a ledger file.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.crash.daemon_process import DaemonProcess
from tests.e2e.conftest import E2E_DIR, Daemon, wait_file, wait_until

pytestmark = pytest.mark.slow

REPO = E2E_DIR.parents[1]


async def wf(
    daemon: Daemon, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(daemon.cli, *args, input=input)


async def wf_json(daemon: Daemon, *args: str, input: str | None = None) -> Any:
    proc = await wf(daemon, "--json", *args, input=input)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return orjson.loads(proc.stdout)


async def submit(daemon: Daemon, workflow_id: str, data: Any = None, *flags: str) -> str:
    run = await wf_json(daemon, "submit", workflow_id, "--input",
                        orjson.dumps(data if data is not None else {}).decode(), *flags)
    run_id: str = run["run_id"]
    return run_id


async def shown(daemon: Daemon, run_id: str) -> dict[str, Any]:
    got: dict[str, Any] = await wf_json(daemon, "show", run_id)
    return got


async def status_is(daemon: Daemon, run_id: str, *statuses: str, timeout: float = 15) -> Any:
    async def check() -> Any:
        run = await shown(daemon, run_id)
        return run if run["status"] in statuses else None

    return await wait_until(check, timeout=timeout, what=f"{run_id} in {statuses}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- pause ----------------------------------------------------------------------------------------


async def test_paused_run_survives_kill_9_and_acts_at_resume_on_what_came_meanwhile(
    daemon: Daemon,
) -> None:
    run_id = await submit(daemon, "e2e-signal")
    await status_is(daemon, run_id, "waiting")
    assert (await wf_json(daemon, "pause", run_id))["status"] == "paused"
    assert await wf_json(daemon, "signal", run_id, "go", "--payload", "7") == {"delivered": True}
    daemon.kill()
    daemon.start()
    after = await shown(daemon, run_id)
    assert (after["status"], after["paused"]) == ("paused", True)
    assert [w["status"] for w in after["waitpoints"]] == ["resolved"]  # recorded, not acted on
    assert (await wf_json(daemon, "resume", run_id))["paused"] is False
    done = await wf_json(daemon, "wait", run_id)
    assert (done["status"], done["output"]) == ("completed", {"payload": 7})


async def test_pause_mid_step_lets_it_finish_and_holds_the_run_across_kill_9(
    daemon: Daemon, tmp_path: Path
) -> None:
    marker, gate, ledger = tmp_path / "marker", tmp_path / "gate", tmp_path / "ledger"
    run_id = await submit(daemon, "e2e-gated",
                          {"marker": str(marker), "gate": str(gate), "ledger": str(ledger)})
    await asyncio.to_thread(wait_file, marker)
    pausing = asyncio.ensure_future(wf_json(daemon, "pause", run_id))
    await wait_until(lambda: _flagged(daemon, run_id), what="the pause to be committed")
    gate.write_text("open")
    await pausing
    await status_is(daemon, run_id, "paused")
    assert lines(ledger) == ["gated"]  # the step in flight finished and was recorded
    daemon.kill()
    daemon.start()
    assert (await shown(daemon, run_id))["status"] == "paused"
    assert lines(ledger) == ["gated"]
    await wf_json(daemon, "resume", run_id)
    assert (await wf_json(daemon, "wait", run_id))["status"] == "completed"
    assert lines(ledger) == ["gated", "after"]  # the recorded step did not run again


async def _flagged(daemon: Daemon, run_id: str) -> bool:
    return bool((await shown(daemon, run_id))["paused"])


async def test_paused_workflow_holds_new_runs_pending_across_a_restart_until_resumed(
    daemon: Daemon,
) -> None:
    paused = await wf_json(daemon, "pause", "--workflow", "e2e-echo")
    assert paused == {"workflow_id": "e2e-echo", "paused": True}
    run_id = await submit(daemon, "e2e-echo", {"n": 1})
    held = await shown(daemon, run_id)
    assert (held["status"], held["pending"]) == ("pending", {"paused_workflow": True})
    daemon.restart()
    assert (await shown(daemon, run_id))["status"] == "pending"
    other = await submit(daemon, "e2e-echo", {"n": 2})
    assert (await wf_json(daemon, "resume", "--workflow", "e2e-echo"))["paused"] is False
    for rid in (run_id, other):
        assert (await wf_json(daemon, "wait", rid))["status"] == "completed"


# --- cancel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compensate", [True, False])
async def test_cancel_of_pending_delayed_parked_and_running_runs(
    daemon: Daemon, tmp_path: Path, compensate: bool
) -> None:
    flag = [] if compensate else ["--no-compensate"]
    await wf_json(daemon, "pause", "--workflow", "e2e-validated")
    pending = await submit(daemon, "e2e-validated", {"n": 1})
    delayed = await submit(daemon, "e2e-echo", {}, "--delay", "1h")
    parked = await submit(daemon, "e2e-reserve-wait")
    running = await submit(daemon, "e2e-slow", {"marker": str(tmp_path / "m")})
    await status_is(daemon, parked, "waiting")
    await asyncio.to_thread(wait_file, tmp_path / "m")
    for run_id in (pending, delayed, parked, running):
        done = await wf_json(daemon, "cancel", run_id, "--reason", "ops", *flag)
        assert (done["status"], done["error"]["message"]) == ("cancelled", "ops"), run_id
    for run_id in (pending, delayed):
        assert (await shown(daemon, run_id))["started_at"] is None
    for run_id in (parked, running):
        comps = (await shown(daemon, run_id))["compensations"]
        assert [c["step_id"] for c in comps] == (["reserve"] if compensate else []), run_id
    code = (await wf(daemon, "cancel", parked)).returncode
    assert code == 1  # RUN_NOT_ACTIVE


async def test_cancel_of_a_parent_cancels_its_child(daemon: Daemon) -> None:
    parent = await submit(daemon, "e2e-parent", {"child": "e2e-reserve-wait"})
    child = f"{parent}-e2e-reserve-wait-0"
    await wait_until(lambda: _exists(daemon, child), what="the child")
    await status_is(daemon, child, "waiting")
    assert (await wf_json(daemon, "cancel", parent))["status"] == "cancelled"
    ended = await status_is(daemon, child, "cancelled")
    assert [c["step_id"] for c in ended["compensations"]] == ["reserve"]


async def _exists(daemon: Daemon, run_id: str) -> bool:
    return (await wf(daemon, "show", run_id)).returncode == 0


async def test_cancel_acknowledged_just_before_a_kill_9_is_carried_out_after_restart(
    tmp_path: Path,
) -> None:
    """The daemon dies right after answering the cancel, while the run's compensation is still
    running: the restart finishes the cancel."""
    d = DaemonProcess(tmp_path, modules=["e2e_workflows"], paths=[E2E_DIR])
    gate, marker = tmp_path / "gate", tmp_path / "compensating"
    d.start()
    try:
        run_id = await _submit_via(d, "e2e-slow-undo", {"gate": str(gate), "marker": str(marker)})
        assert d.stop() == 0
        d.start(env={"WF_CRASH_AT": "reply.sent:1"})  # dies right after its first reply
        acked = await asyncio.to_thread(_cli, d, "--json", "cancel", run_id)
        assert acked.returncode == 0, acked.stderr
        assert orjson.loads(acked.stdout)["status"] != "cancelled"  # compensating still
        assert d.proc is not None and d.proc.wait(timeout=10) == -9
        assert marker.exists()
        gate.write_text("open")
        d.start()
        done = await asyncio.to_thread(_cli, d, "--json", "wait", run_id, "--timeout", "20s")
        record = orjson.loads(done.stdout)
        assert (record["status"], record["cancel_requested"]["reason"]) == ("cancelled", None)
    finally:
        d.stop()


def _cli(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_WF, "--socket", str(d.socket), *args],
        capture_output=True, text=True, timeout=60, cwd=d.workdir,
    )


_WF = [sys.executable, "-m", "orchestrator"]


async def _submit_via(d: DaemonProcess, workflow_id: str, data: Any) -> str:
    out = await asyncio.to_thread(_cli, d, "--json", "submit", workflow_id, "--input",
                                  orjson.dumps(data).decode())
    assert out.returncode == 0, out.stderr
    run_id: str = orjson.loads(out.stdout)["run_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown_ = await asyncio.to_thread(_cli, d, "--json", "show", run_id)
        if orjson.loads(shown_.stdout)["status"] == "waiting":
            return run_id
        await asyncio.sleep(0.05)
    pytest.fail(f"{run_id} never parked")


# --- retry ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["resume", "retrigger"])
async def test_retry_through_the_cli(daemon: Daemon, tmp_path: Path, mode: str) -> None:
    ledger, fix = tmp_path / "ledger", tmp_path / "fix"
    run_id = await submit(daemon, "e2e-flaky", {"ledger": str(ledger), "fix": str(fix)})
    failed = await wf(daemon, "wait", run_id)
    assert failed.returncode == 1 and "E2E_FLAKY" in failed.stdout
    fix.write_text("fixed")
    again = await wf_json(daemon, "retry", run_id, "--mode", mode)
    assert again["attempt"] == (2 if mode == "retrigger" else 1)
    done = await wf_json(daemon, "wait", run_id)
    assert (done["status"], done["output"]) == ("completed", {"attempt": again["attempt"]})
    firsts = 1 if mode == "resume" else 2  # resume keeps the completed step
    assert lines(ledger) == ["first"] * firsts + ["flaky"]
    text = (await wf(daemon, "show", run_id)).stdout
    assert "retries" in text and mode in text


# --- bulk -----------------------------------------------------------------------------------------


async def test_bulk_cancel_by_filter_with_dry_run_confirmation_and_yes(daemon: Daemon) -> None:
    runs = [await submit(daemon, "e2e-echo", {"n": n}, "--delay", "1h", "--tag", "batch")
            for n in range(3)]
    done = await submit(daemon, "e2e-echo", {}, "--tag", "batch")
    await wf_json(daemon, "wait", done)
    dry = await wf(daemon, "cancel", "--tag", "batch", "--dry-run")
    assert dry.returncode == 0
    assert dry.stdout.strip() == "4 runs match; cancel would apply to 3 (dry run)"
    declined = await wf(daemon, "cancel", "--tag", "batch", input="n\n")
    assert declined.returncode == 1 and "cancel 3 runs" in declined.stderr
    assert {(await shown(daemon, r))["status"] for r in runs} == {"pending"}
    confirmed = await wf(daemon, "cancel", "--tag", "batch", input="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert confirmed.stdout.strip() == "4 runs match; cancel applied to 3 of 3"
    assert {(await shown(daemon, r))["status"] for r in runs} == {"cancelled"}
    again = await wf_json(daemon, "retry", "--tag", "batch", "--status", "cancelled", "--yes")
    assert again == {"matched": 3, "eligible": 3, "done": 3}
    for run_id in runs:  # a retry starts now, whatever the delay was
        assert (await wf_json(daemon, "wait", run_id))["status"] == "completed"
    later = [await submit(daemon, "e2e-echo", {}, "--delay", "1h") for _ in range(2)]
    paused = await wf_json(daemon, "pause", "--workflow", "e2e-echo", "--status", "pending",
                           "--yes")
    assert paused["done"] == 2  # with a filter, --workflow selects runs, not the workflow
    assert {(await shown(daemon, r))["paused"] for r in later} == {True}
    usage = await wf(daemon, "cancel")
    assert usage.returncode == 2 and "give a RUN, or filters" in usage.stderr


# --- changes --------------------------------------------------------------------------------------


async def test_changes_follows_status_changes_live(daemon: Daemon) -> None:
    follower = daemon.cli_popen("--json", "changes")
    try:
        await asyncio.sleep(0.5)  # let it subscribe (nothing is replayed without --since)
        run_id = await submit(daemon, "e2e-echo", {"n": 1})
        seen: list[dict[str, Any]] = []
        assert follower.stdout is not None
        while not seen or seen[-1]["status"] != "completed":
            line = await asyncio.wait_for(asyncio.to_thread(follower.stdout.readline), 10)
            change = orjson.loads(line)
            if change.get("run_id") == run_id:
                seen.append(change)
    finally:
        follower.terminate()
        follower.wait(10)
    assert [c["status"] for c in seen] == ["pending", "running", "completed"]
    assert all(c["workflow_id"] == "e2e-echo" for c in seen)
