"""A workflow's own code can fail only its own run, and parking is exact (the structure issue's
defects, each through a real daemon)."""

from __future__ import annotations

import pytest

from orchestrator.client import Client
from tests.e2e.conftest import Daemon, wait_status

pytestmark = pytest.mark.slow


async def test_a_sibling_branch_awaiting_asyncio_is_not_parked_early(
    daemon: Daemon, client: Client
) -> None:
    run = await client.submit("e2e-busy-sibling", {"type": "go.busy"})
    await wait_status(client, run["run_id"], "waiting")
    detail = await client.get(run["run_id"])
    # The step of the busy branch was recorded before the run said it was waiting.
    assert [s["step_id"] for s in detail["steps"]] == ["after"]
    await client.send_event("go.busy", {"n": 1})
    done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "completed", done
    assert done["output"] == [{"n": 1}, "X"]
    assert "run.storage_error" not in daemon.new_log()


async def test_wait_for_around_a_ctx_wait_times_out_and_the_body_goes_on(
    client: Client,
) -> None:
    run = await client.submit("e2e-wait-for-timeout", {"type": "never.sent"})
    done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "completed", done
    assert done["output"] == "timed out"


async def test_sys_exit_in_a_body_fails_its_run_and_the_daemon_carries_on(
    daemon: Daemon, client: Client
) -> None:
    bad = await client.submit("e2e-system-exit", {})
    done = await client.wait(bad["run_id"], timeout=10)
    assert done["status"] == "failed"
    assert done["error"]["name"] == "SystemExit"
    assert done["error"]["message"] == "3"
    ok = await client.submit("e2e-echo", {"still": "alive"})
    assert (await client.wait(ok["run_id"], timeout=10))["status"] == "completed"
    # A restart does not replay the failed run into the same exit.
    daemon.restart()
    async with daemon.client() as c:
        again = await c.submit("e2e-echo", {"after": "restart"})
        assert (await c.wait(again["run_id"], timeout=10))["status"] == "completed"
        assert (await c.get(bad["run_id"]))["status"] == "failed"


async def test_keyboard_interrupt_in_a_step_fails_its_run_only(client: Client) -> None:
    bad = await client.submit("e2e-step-interrupt", {})
    done = await client.wait(bad["run_id"], timeout=10)
    assert done["status"] == "failed"
    assert done["error"]["name"] == "KeyboardInterrupt"
    detail = await client.get(bad["run_id"])
    assert [(s["step_id"], s["attempt"]) for s in detail["steps"]] == [("interrupted", 1)]
    ok = await client.submit("e2e-echo", {})
    assert (await client.wait(ok["run_id"], timeout=10))["status"] == "completed"


async def test_a_body_stuck_on_a_foreign_await_fails_non_durable_await(
    make_daemon: object,
) -> None:
    daemon = make_daemon(runtime={"deadlock_timeout": "300ms"})  # type: ignore[operator]
    async with daemon.client() as client:
        run = await client.submit("e2e-foreign-await", {})
        done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "NON_DURABLE_AWAIT"
    assert "e2e_workflows.py" in done["error"]["message"]


async def test_replay_of_a_tagged_run_finds_no_divergence(client: Client) -> None:
    run = await client.submit("e2e-tagged", {}, tags=["vip"])
    done = await client.wait(run["run_id"], timeout=10)
    assert done["status"] == "completed"
    report = await client.replay(run["run_id"])
    assert report["diverged"] is False, report
