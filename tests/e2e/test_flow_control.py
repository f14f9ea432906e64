"""Flow control through a real daemon (SPEC §2a): concurrency limits across a ``kill -9``,
round-robin fairness, throttle spacing, debounce across restarts, and the CLI's view of
cancel-newest, time to live and a pending run's reason.

The workflows live in :mod:`tests.e2e.flow_workflows` (loaded by the daemon, never imported
here) and write a fsynced ledger; the checks read the ledger and the runs' records.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.client import Client
from tests.e2e.conftest import E2E_DIR, Daemon, wait_status, wait_until

pytestmark = pytest.mark.slow

REPO = E2E_DIR.parents[1]
WORKFLOWS = {"paths": [str(E2E_DIR), str(REPO)], "modules": ["e2e_workflows", "flow_workflows"]}


@pytest.fixture
def flow_daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon(workflows=WORKFLOWS)


def read_ledger(path: Path) -> list[list[Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_text().splitlines() if line]


def ledger_lines(path: Path) -> int:
    """Lines written so far (without parsing: a line may be half written)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def submit_all(client: Client, workflow_id: str, inputs: list[dict[str, Any]]) -> list[str]:
    runs = await asyncio.gather(*(client.submit(workflow_id, i) for i in inputs))
    return [run["run_id"] for run in runs]


async def wf(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(daemon.cli, *args)


async def wf_json(daemon: Daemon, *args: str) -> Any:
    proc = await wf(daemon, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


# --- concurrency ----------------------------------------------------------------------------------


def peak_per_key(
    ledger: list[list[Any]], counted: dict[str, str], killed_pid: int, killed_at: float
) -> dict[str, int]:
    """The most runs of one key holding a slot at once, by the ledger.

    A run holds its slot from the start attempt its record kept (``counted``: run id → token)
    to its last ``end``. A start attempt that was not kept ran in the killed daemon and held a
    slot there until the kill.
    """
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    last_end: dict[str, float] = {}
    kept: dict[str, tuple[str, float]] = {}
    for key, run_id, what, at, pid, token in ledger:
        if what == "end":
            last_end[run_id] = max(last_end.get(run_id, at), at)
        elif counted[run_id] == token:
            kept[run_id] = (key, at)
        else:
            assert pid == killed_pid, f"an attempt of {run_id} not kept, from a live daemon"
            spans[key].append((at, killed_at))
    for run_id, (key, at) in kept.items():
        spans[key].append((at, last_end[run_id]))
    peaks = {}
    for key, intervals in spans.items():
        # Ends sort before starts at the same instant: touching intervals do not overlap.
        events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
        peaks[key] = max(itertools.accumulate(delta for _, delta in events))
    return peaks


async def test_per_key_limit_holds_across_a_kill_9_and_every_run_completes(
    flow_daemon: Daemon, tmp_path: Path
) -> None:
    """200 runs of Concurrency(3, key) over 5 keys; the daemon is killed half way through."""
    ledger = tmp_path / "ledger.ndjson"
    inputs = [{"ledger": str(ledger), "key": f"k{n % 5}", "nap": 0.05} for n in range(200)]
    async with flow_daemon.client() as c:
        run_ids = await submit_all(c, "flow-per-key", inputs)
        await wait_until(lambda: ledger_lines(ledger) >= 200, what="half the ledger")
    assert flow_daemon.proc is not None
    killed_pid = flow_daemon.proc.pid
    flow_daemon.kill()
    killed_at = time.time()
    finished_before = {line[1] for line in read_ledger(ledger) if line[2] == "end"}
    assert 0 < len(finished_before) < 200

    flow_daemon.start()
    async with flow_daemon.client() as c:
        done = await asyncio.wait_for(
            asyncio.gather(*(c.wait(run_id, timeout=30) for run_id in run_ids)), 40
        )
    assert {run["status"] for run in done} == {"completed"}
    counted = {run["run_id"]: run["output"] for run in done}
    entries = read_ledger(ledger)
    assert {line[4] for line in entries} >= {killed_pid}
    assert len({line[4] for line in entries}) == 2  # both daemons ran some
    peaks = peak_per_key(entries, counted, killed_pid, killed_at)
    assert set(peaks) == {f"k{n}" for n in range(5)}
    assert max(peaks.values()) <= 3, peaks
    assert 3 in peaks.values()  # the limit was reached, so the check had something to check


async def test_key_with_many_queued_runs_delays_a_quiet_key_by_one_turn_at_most(
    flow_daemon: Daemon, tmp_path: Path
) -> None:
    """One slot for the workflow, round-robin over input keys: 100 runs of 'busy' wait, then
    one of 'quiet' arrives; at most one more 'busy' run starts before it."""
    ledger = tmp_path / "ledger.ndjson"
    busy = [{"ledger": str(ledger), "key": "busy", "nap": 0.02} for _ in range(100)]
    async with flow_daemon.client() as c:
        await submit_all(c, "flow-fair", busy)
        quiet = await c.submit("flow-fair", {"ledger": str(ledger), "key": "quiet", "nap": 0.02})
        submitted_at = len(read_ledger(ledger))  # ledger lines written before the ack
        done = await c.wait(quiet["run_id"], timeout=10)
        assert done["status"] == "completed"
        stats = await c.stats()
    entries = read_ledger(ledger)
    quiet_start = next(i for i, line in enumerate(entries) if line[1] == quiet["run_id"])
    overtaking = [line for line in entries[submitted_at:quiet_start] if line[2] == "start"]
    assert len(overtaking) <= 1, overtaking
    assert stats["flow"]["groups"]["flow-fair"]["queued"] > 50  # 'busy' was still queued


# --- throttle -------------------------------------------------------------------------------------


async def test_throttled_starts_are_spaced_within_ten_percent_of_the_period(
    flow_daemon: Daemon,
) -> None:
    period = 0.3
    async with flow_daemon.client() as c:
        run_ids = await submit_all(c, "flow-throttled", [{"n": n} for n in range(5)])
        done = await asyncio.gather(*(c.wait(run_id, timeout=10) for run_id in run_ids))
    assert {run["status"] for run in done} == {"completed"}
    starts = sorted(run["started_at"] for run in done)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(period <= gap <= period * 1.1 for gap in gaps), gaps


# --- debounce -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["sigterm", "kill-9"])
async def test_debounce_fires_once_with_the_last_input_across_a_restart(
    flow_daemon: Daemon, tmp_path: Path, stop: str
) -> None:
    ledger = str(tmp_path / "ledger.ndjson")
    async with flow_daemon.client() as c:
        first = await c.submit("flow-debounced", {"ledger": ledger, "key": "u1", "n": 1})
        second = await c.submit("flow-debounced", {"ledger": ledger, "key": "u1", "n": 2})
    assert (second["run_id"], second["debounced"]) == (first["run_id"], True)
    if stop == "sigterm":
        flow_daemon.stop_cleanly()
    else:
        flow_daemon.kill()
    flow_daemon.start()
    async with flow_daemon.client() as c:
        third = await c.submit("flow-debounced", {"ledger": ledger, "key": "u1", "n": 3})
        assert (third["run_id"], third["debounced"]) == (first["run_id"], True)
        done = await c.wait(first["run_id"], timeout=20)
        runs = (await c.list(workflow_id="flow-debounced"))["runs"]
    assert (done["status"], done["output"]["n"]) == ("completed", 3)
    assert [run["run_id"] for run in runs] == [first["run_id"]]
    assert [line[1] for line in read_ledger(Path(ledger))] == [first["run_id"]]


# --- through the CLI ------------------------------------------------------------------------------


async def test_cli_shows_cancel_newest_and_a_pending_run_expiring_after_its_ttl(
    flow_daemon: Daemon,
) -> None:
    holder = await wf_json(flow_daemon, "submit", "flow-single", "--input", "{}")
    async with flow_daemon.client() as c:
        await wait_status(c, holder["run_id"], "waiting")
    refused = await wf_json(flow_daemon, "submit", "flow-single", "--input", "{}")
    assert refused["status"] == "cancelled"
    assert refused["error"]["code"] == "CONCURRENCY_LIMIT"
    assert refused["started_at"] is None

    queue_holder = await wf_json(flow_daemon, "submit", "flow-queue", "--input", "{}")
    async with flow_daemon.client() as c:
        await wait_status(c, queue_holder["run_id"], "waiting")
    # The ttl must outlast one CLI process start (``show`` below): over 1 s on a loaded box.
    short = await wf_json(flow_daemon, "submit", "flow-queue", "--input", "{}", "--ttl", "5s")
    assert short["status"] == "pending"
    assert short["expires_at"] == pytest.approx(short["created_at"] + 5)
    shown = await wf_json(flow_daemon, "show", short["run_id"])
    assert shown["pending"] == {
        "concurrency": {"group": "flow-queue", "limit": 1, "holders": 1},
        "expires_at": short["expires_at"],
    }
    waited = await wf(flow_daemon, "wait", short["run_id"])
    assert waited.returncode == 1, waited.stdout + waited.stderr  # ended, not completed
    ended = await wf_json(flow_daemon, "show", short["run_id"])
    assert (ended["status"], ended["error"]["code"]) == ("cancelled", "EXPIRED")
    assert ended["started_at"] is None and ended["steps"] == []
    assert "pending" not in ended

    # The human forms: `wf show` says why a run waits, `wf stats` counts the group's queue.
    queued = await wf_json(flow_daemon, "submit", "flow-queue", "--input", "{}")
    shown_text, stats_text = await asyncio.gather(
        wf(flow_daemon, "show", queued["run_id"]), wf(flow_daemon, "stats"))
    assert shown_text.returncode == 0 and stats_text.returncode == 0
    (why,) = [line for line in shown_text.stdout.splitlines() if line.startswith("pending:")]
    assert why.split() == ["pending:", 'concurrency={"group":"flow-queue","limit":1,"holders":1}']
    assert "flow.groups.flow-queue.queued: 1" in stats_text.stdout.splitlines()
    assert "flow.groups.flow-queue.holders: 1" in stats_text.stdout.splitlines()
