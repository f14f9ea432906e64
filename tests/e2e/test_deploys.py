"""Deploying changed workflow code while runs are parked (SPEC §3, §14), through a real daemon
restarted on each version of a module written by the test: a run whose journal the new code
no longer follows is held ``paused`` with code ``NONDETERMINISM`` (never failed, and the
inserted step never runs); after a fixed deploy, ``wf resume`` continues it."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.e2e.conftest import Daemon, wait_until

pytestmark = pytest.mark.slow

V1 = '''
from pathlib import Path
from runtime import workflow

LEDGER = Path(__file__).resolve().parents[1] / "ledger.txt"

def note(name):
    def fn():
        with LEDGER.open("a") as f:
            f.write(name + "\\n")
        return name
    return fn

@workflow(id="deploy.order")
async def order(input, ctx):
    reserved = await ctx.step("reserve", note("reserve"))
    paid = await ctx.wait_for_event("order.paid", match={"order": input["order"]})
    shipped = await ctx.step("ship", note("ship"))
    return [reserved, paid["amount"], shipped]
'''

# A fraud check inserted before the recorded "reserve": parked runs no longer replay.
V2_BROKEN = V1.replace(
    '    reserved = await ctx.step("reserve", note("reserve"))',
    '    await ctx.step("fraud_check", note("fraud_check"))\n'
    '    reserved = await ctx.step("reserve", note("reserve"))',
)

# The fix: the new step goes after the wait, where no parked run has recorded anything yet.
V3_FIXED = V1.replace(
    '    shipped = await ctx.step("ship", note("ship"))',
    '    await ctx.step("fraud_check", note("fraud_check"))\n'
    '    shipped = await ctx.step("ship", note("ship"))',
)


def deploy(daemon: Daemon, name: str, source: str) -> None:
    """Write one version of the module in a directory of its own and point the config at it
    (a fresh directory: no stale bytecode of an older version can be picked up)."""
    where = daemon.root / name
    where.mkdir()
    (where / "deploy_wf.py").write_text(textwrap.dedent(source), encoding="utf-8")
    daemon.sections["workflows"] = {"paths": [str(where)], "modules": ["deploy_wf"]}
    daemon.write_config()


async def wf_json(daemon: Daemon, *args: str) -> Any:
    proc = await asyncio.to_thread(daemon.cli, "--json", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return orjson.loads(proc.stdout)


async def status_is(daemon: Daemon, run_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        run: dict[str, Any] = await wf_json(daemon, "show", run_id)
        return run if run["status"] == status else None

    return await wait_until(check, timeout=15, what=f"{run_id} {status}")


def ledger(daemon: Daemon) -> list[str]:
    path = daemon.root / "ledger.txt"
    return path.read_text().split() if path.exists() else []


async def test_a_deploy_that_breaks_parked_runs_holds_them_until_a_fixed_deploy(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(start=False)
    deploy(daemon, "v1", V1)
    daemon.start()
    runs = [
        (await wf_json(daemon, "submit", "deploy.order", "--input",
                       orjson.dumps({"order": n}).decode()))["run_id"]
        for n in (1, 2)
    ]
    for run_id in runs:
        await status_is(daemon, run_id, "waiting")
    daemon.stop_cleanly()

    deploy(daemon, "v2", V2_BROKEN)
    daemon.start()
    await wf_json(daemon, "event", "send", "order.paid", "--payload",
                  orjson.dumps({"order": 1, "amount": 10}).decode())
    held = await status_is(daemon, runs[0], "paused")
    assert held["error"]["code"] == "NONDETERMINISM"
    divergence = held["error"]["data"]["divergence"]
    assert divergence["kind"] == "inserted"
    assert divergence["new"] == {"step_id": "fraud_check"}
    assert divergence["unconsumed"]["step_ids"] == ["reserve"]
    assert ledger(daemon) == ["reserve", "reserve"]  # fraud_check never ran
    assert '"replay.divergence"' in daemon.new_log()
    # A resume on the same broken code replays and holds it again: never failed.
    await wf_json(daemon, "resume", runs[0])
    again = await status_is(daemon, runs[0], "paused")
    assert again["error"]["code"] == "NONDETERMINISM"
    # The other run was not touched: still parked on its event.
    assert (await wf_json(daemon, "show", runs[1]))["status"] == "waiting"
    daemon.stop_cleanly()

    deploy(daemon, "v3", V3_FIXED)
    daemon.start()
    assert (await wf_json(daemon, "show", runs[0]))["status"] == "paused"  # held across restart
    await wf_json(daemon, "resume", runs[0])
    done = await status_is(daemon, runs[0], "completed")
    assert done["output"] == ["reserve", 10, "ship"]
    await wf_json(daemon, "event", "send", "order.paid", "--payload",
                  orjson.dumps({"order": 2, "amount": 20}).decode())
    other = await status_is(daemon, runs[1], "completed")
    assert other["output"] == ["reserve", 20, "ship"]
    assert ledger(daemon) == ["reserve", "reserve", "fraud_check", "ship", "fraud_check", "ship"]
