"""``wf fork`` and ``wf amend`` (SPEC §14) through a real daemon, its socket and the CLI.

A fork is a new run whose journal is the original's up to (not including) a step: the steps
before it are not run again, tokens copied get new ids, ``forked_from`` is on the new run, the
original is untouched, and a fork of a fork works. An amend replaces the result of the step a run
stopped on, in place, with an audit row (peer uid from SO_PEERCRED) that ``get`` and ``wf show``
display; any other step is refused with ``NOT_FRONTIER`` naming the later entries.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from orchestrator.client import RemoteError
from tests.e2e.conftest import Daemon, wait_until

pytestmark = pytest.mark.slow

CODE = '''
from pathlib import Path
from runtime import FatalError, RetryPolicy, workflow

HERE = Path(__file__).resolve().parent
LEDGER = HERE / "ledger.txt"

def note(name):
    def fn():
        with LEDGER.open("a") as f:
            f.write(name + "\\n")
        return name
    return fn

def charge(amount):
    with LEDGER.open("a") as f:
        f.write(f"charge:{amount}\\n")
    return amount

@workflow(id="fork.order")
async def order(input, ctx):
    reserved = await ctx.step("reserve", note("reserve"))
    token = await ctx.wait_for_token()
    approved = await token.wait()
    paid = await ctx.wait_for_event("order.paid", match={"order": input["order"]})
    charged = await ctx.step("charge", charge, input.get("amount", paid["amount"]))
    shipped = await ctx.step("ship", note("ship"))
    return [reserved, approved, charged, shipped]

def flaky():
    with LEDGER.open("a") as f:
        f.write("flaky\\n")
    raise FatalError("the warehouse is down", code="DOWN")

@workflow(id="fork.flaky")
async def flaky_wf(input, ctx):
    first = await ctx.step("first", note("first"))
    got = await ctx.step("flaky", flaky)
    return [first, got]

def always_fails():
    raise RuntimeError("try later")

@workflow(id="fork.backoff")
async def backoff(input, ctx):
    await ctx.step("first", note("first"))
    got = await ctx.step("call", always_fails,
                         retry=RetryPolicy(max=5, backoff="fixed", initial=3600))
    await ctx.step("after", note("after"))
    return got

async def gate():
    import asyncio
    while not (HERE / "gate").exists():
        await asyncio.sleep(0.02)
    return "open"

@workflow(id="fork.gated")
async def gated(input, ctx):
    await ctx.step("first", note("first"))
    return await ctx.step("gate", gate)
'''


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    d = make_daemon(start=False)
    where = d.root / "code"
    where.mkdir()
    (where / "fork_wf.py").write_text(textwrap.dedent(CODE), encoding="utf-8")
    d.sections["workflows"] = {"paths": [str(where)], "modules": ["fork_wf"]}
    d.write_config()
    d.start()
    return d


def ledger(daemon: Daemon) -> list[str]:
    path = daemon.root / "code" / "ledger.txt"
    return path.read_text().split() if path.exists() else []


async def wf_json(daemon: Daemon, *args: str) -> Any:
    proc = await asyncio.to_thread(daemon.cli, "--json", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return orjson.loads(proc.stdout)


async def status_is(daemon: Daemon, run_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        run: dict[str, Any] = await wf_json(daemon, "show", run_id)
        return run if run["status"] == status else None

    return await wait_until(check, timeout=15, what=f"{run_id} {status}")


def token_of(run: dict[str, Any]) -> str:
    (token,) = [w["token_id"] for w in run["waitpoints"] if w["token_id"]]
    return str(token)


async def finish_order(daemon: Daemon, run_id: str, order: int, amount: int) -> dict[str, Any]:
    """Complete the run's token and send its event; returns it completed."""
    async def parked() -> dict[str, Any] | None:
        run: dict[str, Any] = await wf_json(daemon, "show", run_id)
        return run if any(w["token_id"] for w in run["waitpoints"]) else None

    run = await wait_until(parked, timeout=15, what=f"{run_id} token")
    await wf_json(daemon, "token", "complete", token_of(run), "--payload", '"yes"')
    await wf_json(daemon, "event", "send", "order.paid", "--payload",
                  orjson.dumps({"order": order, "amount": amount}).decode())
    return await status_is(daemon, run_id, "completed")


async def test_fork_copies_the_journal_before_the_step_and_a_fork_of_a_fork_works(
    daemon: Daemon,
) -> None:
    original_id = (await wf_json(daemon, "submit", "fork.order", "--input", '{"order": 1}'))[
        "run_id"]
    original = await finish_order(daemon, original_id, 1, 10)
    assert original["output"] == ["reserve", "yes", 10, "ship"]
    assert ledger(daemon) == ["reserve", "charge:10", "ship"]

    fork = await wf_json(daemon, "fork", original_id, "--from-step", "ship",
                         "--reason", "the parcel was lost")
    assert fork["run_id"] != original_id
    assert fork["forked_from"]["run_id"] == original_id
    assert fork["forked_from"]["from_step"] == "ship"
    assert fork["forked_from"]["reason"] == "the parcel was lost"
    done = await status_is(daemon, fork["run_id"], "completed")
    assert done["output"] == ["reserve", "yes", 10, "ship"]
    assert ledger(daemon) == ["reserve", "charge:10", "ship", "ship"]  # only "ship" again
    # The copied token has a new id (derived from the fork's run id), still resolved.
    assert token_of(done) != token_of(original)
    steps = {s["step_id"]: s for s in done["steps"]}
    assert steps["reserve"]["finished_at"] == {
        s["step_id"]: s for s in original["steps"]}["reserve"]["finished_at"]  # a copy
    # The original is untouched.
    assert await wf_json(daemon, "show", original_id) == original
    # Its journal is numbered 1, 2, ... in the original's order.
    doc = await wf_json(daemon, "export", fork["run_id"])
    entries = doc["runs"][0]["entries"]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert [(e["type"], e.get("step_id") or e.get("wp_id", "")[:6]) for e in entries][:5] == [
        ("step", "reserve"), ("waitpoint", "token:"), ("resolution", "token:"),
        ("waitpoint", "event:"), ("resolution", "event:")]

    # A fork of the fork, from an earlier step and with another input: "charge" runs again
    # with the new amount; the token and the event are not waited for again.
    again = await wf_json(daemon, "fork", fork["run_id"], "--from-step", "charge",
                          "--input", '{"order": 1, "amount": 99}')
    assert again["forked_from"]["run_id"] == fork["run_id"]
    assert again["input"] == {"order": 1, "amount": 99}
    done_again = await status_is(daemon, again["run_id"], "completed")
    assert done_again["output"] == ["reserve", "yes", 99, "ship"]
    assert ledger(daemon)[-2:] == ["charge:99", "ship"]
    shown = await asyncio.to_thread(daemon.cli, "show", again["run_id"])
    assert f"forked from:   {fork['run_id']} before step charge" in shown.stdout

    # A fork with no step: everything recorded is copied; a copy of a completed run replays
    # to the same output and runs nothing.
    whole = await wf_json(daemon, "fork", original_id)
    assert (await status_is(daemon, whole["run_id"], "completed"))["output"] == original["output"]
    assert ledger(daemon)[-2:] == ["charge:99", "ship"]


async def test_fork_of_a_parked_run_waits_again_for_what_it_had_not_received(
    daemon: Daemon,
) -> None:
    parked = (await wf_json(daemon, "submit", "fork.order", "--input", '{"order": 2}'))["run_id"]
    await status_is(daemon, parked, "waiting")
    fork = await wf_json(daemon, "fork", parked)
    await status_is(daemon, fork["run_id"], "waiting")
    # Its token is its own (the unresolved wait was not copied: it waits anew).
    done = await finish_order(daemon, fork["run_id"], 2, 20)
    assert done["output"] == ["reserve", "yes", 20, "ship"]
    assert (await wf_json(daemon, "show", parked))["status"] == "waiting"  # untouched
    assert ledger(daemon).count("reserve") == 1  # the fork did not reserve again


async def test_fork_refuses_a_step_the_run_never_reached_and_unknown_runs(daemon: Daemon) -> None:
    run_id = (await wf_json(daemon, "submit", "fork.order", "--input", '{"order": 3}'))["run_id"]
    await status_is(daemon, run_id, "waiting")
    async with daemon.client() as c:
        with pytest.raises(RemoteError) as never:
            await c.fork(run_id, from_step="ship")
        assert never.value.code == "INVALID_PARAMS"
        assert never.value.data["field"] == "from_step"
        assert "reserve" in never.value.data["expected"]
        with pytest.raises(RemoteError) as unknown:
            await c.fork("no-such-run")
        assert unknown.value.code == "NOT_FOUND"
        with pytest.raises(RemoteError) as taken:
            await c.fork(run_id, run_id_new=run_id)
        assert taken.value.code == "INVALID_PARAMS"
    proc = await asyncio.to_thread(daemon.cli, "fork", run_id, "--from-step", "nope")
    assert proc.returncode == 1 and "INVALID_PARAMS" in proc.stderr + proc.stdout


async def test_amend_the_failed_frontier_step_then_retry_resume_continues(
    daemon: Daemon,
) -> None:
    run_id = (await wf_json(daemon, "submit", "fork.flaky"))["run_id"]
    failed = await status_is(daemon, run_id, "failed")
    assert failed["error"]["code"] == "DOWN"
    async with daemon.client() as c:
        with pytest.raises(RemoteError) as later:
            await c.amend(run_id, "first", {"x": 1}, "wrong step")
        assert later.value.code == "NOT_FRONTIER"
        assert [(e["type"], e["id"]) for e in later.value.data["later"]] == [("step", "flaky")]
        assert "flaky" in later.value.message
        with pytest.raises(RemoteError) as unknown:
            await c.amend(run_id, "nope", 1, "no such step")
        assert unknown.value.code == "NOT_FOUND"
        assert unknown.value.data == {"step_id": "nope"}
    proc = await asyncio.to_thread(daemon.cli, "amend", run_id, "--step", "flaky",
                                   "--output", "{not json", "--reason", "x")
    assert proc.returncode == 2 and "--output: invalid JSON" in proc.stderr

    amended = await wf_json(daemon, "amend", run_id, "--step", "flaky", "--output",
                            '{"shipped_by": "hand"}', "--reason", "shipped by hand (TICKET-7)")
    assert amended["status"] == "failed"  # in place: retry continues it
    shown = await wf_json(daemon, "show", run_id)
    (audit,) = shown["audit"]
    assert audit["action"] == "amend" and audit["step_id"] == "flaky"
    assert audit["peer_uid"] == os.getuid()
    assert audit["reason"] == "shipped by hand (TICKET-7)"
    assert audit["old"]["status"] == "failed" and audit["old"]["error"]["code"] == "DOWN"
    assert audit["new"] == {"status": "completed", "output": {"shipped_by": "hand"}}
    human = await asyncio.to_thread(daemon.cli, "show", run_id)
    assert "audit:" in human.stdout and "TICKET-7" in human.stdout

    await wf_json(daemon, "retry", run_id, "--mode", "resume")
    done = await status_is(daemon, run_id, "completed")
    assert done["output"] == ["first", {"shipped_by": "hand"}]
    assert ledger(daemon) == ["first", "flaky"]  # neither step ran again
    assert len(done["audit"]) == 1  # the trail survives the retry


async def test_amend_a_step_in_backoff_wakes_the_run(daemon: Daemon) -> None:
    run_id = (await wf_json(daemon, "submit", "fork.backoff"))["run_id"]

    async def in_backoff() -> dict[str, Any] | None:
        run: dict[str, Any] = await wf_json(daemon, "show", run_id)
        waiting = [w for w in run["waitpoints"] if w["status"] == "waiting"]
        return run if run["status"] == "waiting" and waiting else None

    run = await wait_until(in_backoff, timeout=15, what="the step's backoff")
    assert [w["waitpoint_id"] for w in run["waitpoints"]] == ["retry:call:1"]
    await wf_json(daemon, "amend", run_id, "--step", "call", "--output", "42",
                  "--reason", "the partner confirmed by phone")
    done = await status_is(daemon, run_id, "completed")
    assert done["output"] == 42
    assert ledger(daemon) == ["first", "after"]
    assert done["audit"][0]["old"]["attempt"] == 1


async def test_amend_refuses_a_running_run(daemon: Daemon) -> None:
    run_id = (await wf_json(daemon, "submit", "fork.gated"))["run_id"]
    await status_is(daemon, run_id, "running")
    async with daemon.client() as c:
        with pytest.raises(RemoteError) as running:
            await c.amend(run_id, "first", "x", "too early")
        assert running.value.code == "RUN_NOT_ACTIVE"
        assert running.value.data["status"] == "running"
    (daemon.root / "code" / "gate").touch()
    assert (await status_is(daemon, run_id, "completed"))["audit"] == []


async def test_amend_a_paused_run_on_its_frontier_step_then_resume_continues(
    daemon: Daemon,
) -> None:
    run_id = (await wf_json(daemon, "submit", "fork.backoff"))["run_id"]

    async def in_backoff() -> dict[str, Any] | None:
        run: dict[str, Any] = await wf_json(daemon, "show", run_id)
        waiting = [w for w in run["waitpoints"] if w["status"] == "waiting"]
        return run if run["status"] == "waiting" and waiting else None

    await wait_until(in_backoff, timeout=15, what="the step's backoff")
    await wf_json(daemon, "pause", run_id)
    await status_is(daemon, run_id, "paused")
    async with daemon.client() as c:
        with pytest.raises(RemoteError) as later:  # paused or not, only the frontier step
            await c.amend(run_id, "first", "x", "wrong step")
        assert later.value.code == "NOT_FRONTIER"
    amended = await wf_json(daemon, "amend", run_id, "--step", "call", "--output", '"by hand"',
                            "--reason", "paused while we fixed it")
    assert amended["status"] == "paused"
    await asyncio.sleep(0.5)
    shown = await wf_json(daemon, "show", run_id)
    assert shown["status"] == "paused" and ledger(daemon) == ["first"]  # the pause holds
    assert {s["step_id"]: s["status"] for s in shown["steps"]}["call"] == "completed"
    await wf_json(daemon, "resume", run_id)
    done = await status_is(daemon, run_id, "completed")
    assert done["output"] == "by hand"
    assert ledger(daemon) == ["first", "after"]
    assert [a["reason"] for a in done["audit"]] == ["paused while we fixed it"]
