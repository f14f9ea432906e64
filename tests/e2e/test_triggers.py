"""Event triggers through a real daemon (SPEC §2a second half, §4, §6, §10): a batch across a
``kill -9`` (and across a crash between an event's commit and its reply), a burst of events
from several clients, and the README's tour (``welcome`` started by one event and cancelled by
another) through ``wf event send --json``.

The workflows live in :mod:`tests.e2e.trigger_workflows` (loaded by the daemon, never imported
here) and in ``examples.workflows``; the batch consumer writes a fsynced ledger the checks read.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.client import DaemonUnreachable
from tests.e2e.conftest import E2E_DIR, Daemon, stop_all, wait_status, wait_until
from tests.harness import launcher_path

pytestmark = pytest.mark.slow

REPO = E2E_DIR.parents[1]
WORKFLOWS = {"paths": [str(E2E_DIR), str(REPO)], "modules": ["e2e_workflows", "trigger_workflows"]}


class CrashableDaemon(Daemon):
    """A :class:`Daemon` that, with ``crash_at`` set, starts through the test launcher, which
    SIGKILLs it the nth time it passes a crash point (``"event.committed:1"``)."""

    crash_at: str | None = None

    def spawn(self, config_path: Path | None = None) -> subprocess.Popen[bytes]:
        if self.crash_at is None:
            return super().spawn(config_path)
        self._starts += 1
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "WF_CRASH_AT": self.crash_at, "PYTHONPATH": launcher_path()}
        out = (self.root / f"daemon.{self._starts}.stdout").open("wb")
        err = (self.root / f"daemon.{self._starts}.stderr").open("wb")
        with out, err:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.harness.launch", "daemon",
                 "--config", str(config_path or self.config_path)],
                stdout=out, stderr=err, cwd=self.root, env=env,
            )

    def reap(self) -> int:
        """The exit code of a daemon that killed itself at its crash point."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        return proc.wait(10)


@pytest.fixture
def crashable(tmp_path: Path) -> Iterator[CrashableDaemon]:
    d = CrashableDaemon(tmp_path, {"workflows": WORKFLOWS})
    yield d
    stop_all([d])


def read_ledger(path: Path) -> list[list[Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_text().splitlines() if line]


async def wf_json(daemon: Daemon, *args: str) -> Any:
    proc = await asyncio.to_thread(daemon.cli, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


# --- a batch across crashes -----------------------------------------------------------------------


async def test_batch_keeps_exactly_the_events_sent_across_kill_9(
    crashable: CrashableDaemon, tmp_path: Path
) -> None:
    """Two events, kill -9; the third is committed and the daemon killed before it replies
    (the client retries it); then a duplicate and the last two: one run with exactly the five."""
    ledger = tmp_path / "ledger.jsonl"

    def event(i: int) -> dict[str, Any]:
        return {"id": f"e{i}", "ledger": str(ledger)}

    crashable.start()
    async with crashable.client() as c:
        for i in (1, 2):
            assert (await c.send_event("trig.batch", event(i), event_id=f"e{i}"))["started"] == []
    crashable.kill()  # between two events of the batch

    crashable.crash_at = "event.committed:1"
    crashable.start()
    async with crashable.client() as c:
        with pytest.raises(DaemonUnreachable):
            await c.send_event("trig.batch", event(3), event_id="e3")
    assert crashable.reap() == -9
    assert "crash point event.committed" in crashable.stderr_of_last_start()

    crashable.crash_at = None
    crashable.start()
    async with crashable.client() as c:
        assert (await c.stats())["events"] == 3  # e3 was committed, its reply never sent
        for i in (3, 2, 4, 5):  # e3: the client's retry; e2: sent twice
            await c.send_event("trig.batch", event(i), event_id=f"e{i}")

        async def one_batch_run() -> Any:
            runs = (await c.list(workflow_id="trig-batch"))["runs"]
            return runs if runs else None

        (run,) = await wait_until(one_batch_run, what="the batch's run")
        done = await c.wait(run["run_id"], timeout=10)
        assert done["status"] == "completed", done
        assert [e["id"] for e in done["input"]["events"]] == ["e1", "e2", "e3", "e4", "e5"]
        assert done["output"] == 5
        # Nothing is left over for another batch, and the step ran once.
        await c.send_event("trig.batch", event(6), event_id="e6")
        assert len((await c.list(workflow_id="trig-batch"))["runs"]) == 1
    assert [(run_id, ids) for run_id, ids, _ in read_ledger(ledger)] == [
        (run["run_id"], ["e1", "e2", "e3", "e4", "e5"])]


# --- a burst --------------------------------------------------------------------------------------


async def test_thousand_events_from_four_clients_start_exactly_a_thousand_runs(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workflows=WORKFLOWS)
    per_client = 250

    async def client_sends(k: int) -> list[str]:
        async with daemon.client() as c:
            replies = await asyncio.gather(*(
                c.send_event("trig.load", {"n": k * per_client + i}, event_id=f"c{k}-{i}")
                for i in range(per_client)))
        return [run_id for reply in replies for run_id in reply["started"]]

    started = [r for rs in await asyncio.gather(*(client_sends(k) for k in range(4))) for r in rs]
    assert len(started) == 1000 == len(set(started))

    async with daemon.client() as c:
        async def all_done() -> bool:
            runs = (await c.stats())["runs"]
            return bool(runs.get("completed", 0) == 1000)

        await wait_until(all_done, timeout=60, what="1000 triggered runs completed")
        stats = await c.stats()
        assert stats["runs"] == {"completed": 1000}
        assert stats["events"] == 1000
        outputs = await asyncio.gather(*(c.wait(r, timeout=10) for r in started))
    assert sorted(run["output"] for run in outputs) == list(range(1000))
    assert {run["triggered_by"] for run in outputs} == {"event"}


# --- the README's tour ----------------------------------------------------------------------------


async def test_welcome_run_started_by_one_event_is_cancelled_by_a_later_one_via_the_cli(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workflows={"paths": [str(REPO)], "modules": ["examples.workflows"]})
    signed_up = await wf_json(daemon, "event", "send", "user.signed_up",
                              "--payload", '{"user_id": "u-42"}', "--id", "signup-42")
    assert signed_up["event_id"] == "signup-42"
    (run_id,) = signed_up["started"]
    assert signed_up["cancelled"] == 0
    async with daemon.client() as c:
        parked = await wait_status(c, run_id, "waiting")  # the three-day sleep
        assert (parked["workflow_id"], parked["triggered_by"]) == ("welcome", "event")
        assert [s["step_id"] for s in (await c.get(run_id))["steps"]] == ["welcome"]

    other = await wf_json(daemon, "event", "send", "user.deleted", "--payload",
                          '{"user_id": "u-7"}')
    assert (other["started"], other["cancelled"]) == ([], 0)
    deleted = await wf_json(daemon, "event", "send", "user.deleted", "--payload",
                            '{"user_id": "u-42"}')
    assert (deleted["started"], deleted["cancelled"]) == ([], 1)

    shown = await wf_json(daemon, "show", run_id)
    assert shown["status"] == "cancelled"
    assert "user.deleted" in shown["error"]["message"]
    assert [s["step_id"] for s in shown["steps"]] == ["welcome"]  # no follow-up
    again = await wf_json(daemon, "event", "send", "user.signed_up",
                          "--payload", '{"user_id": "u-42"}', "--id", "signup-42")
    assert (again["started"], again["cancelled"]) == ([], 0)  # a re-sent event starts nothing


# --- the examples' batch consumer and nightly report ----------------------------------------------


async def test_click_digest_batches_per_page_and_nightly_report_fires_through_the_cli(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workflows={"paths": [str(REPO)], "modules": ["examples.workflows"]})
    async with daemon.client() as c:
        for i in range(12):  # /home fills a batch of 10; /about's two wait for their 30 s
            page = "/about" if i in (3, 7) else "/home"
            await c.send_event("page.clicked", {"page": page, "user_id": i % 4},
                               event_id=f"click-{i}")
        await c.send_event("page.clicked", {"page": "/home", "user_id": 0},
                           event_id="click-0")  # re-sent: not counted twice

        async def digests() -> Any:
            return (await c.list(workflow_id="click-digest"))["runs"] or None

        (run,) = await wait_until(digests, what="the /home digest")
        done = await c.wait(run["run_id"], timeout=10)
    assert (done["status"], done["triggered_by"]) == ("completed", "event")
    assert done["output"] == {"page": "/home", "clicks": 10, "users": ["0", "1", "2", "3"]}
    assert [e["user_id"] for e in done["input"]["events"]] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]

    (nightly,) = [s for s in (await wf_json(daemon, "schedules"))["schedules"]
                  if s["name"] == "nightly-report"]
    assert (nightly["source"], nightly["rule"], nightly["timezone"], nightly["overlap"]) == (
        "code", "cron 0 3 * * *", "Europe/Paris", "skip")
    assert nightly["next_fire_at"] is not None and not nightly["paused"]
    (fired,) = (await wf_json(daemon, "schedule", "trigger", "nightly-report"))["runs"]
    assert fired["run_id"].startswith("sched:nightly-report:")
    report = await wf_json(daemon, "wait", fired["run_id"])
    assert report["status"] == "completed" and report["output"]["report"] == "orders"
