"""Deploying changed workflow code while runs are parked (SPEC §3, §14), through a real daemon
restarted on each version of a module written by the test: a run whose journal the new code
no longer follows is held ``paused`` with code ``NONDETERMINISM`` (never failed, and the
inserted step never runs); after a fixed deploy, ``wf resume`` continues it. Before a deploy,
``wf export`` + ``wf replay --check`` (files, or ``--db`` beside the live daemon) find exactly
the runs the new code breaks."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.conftest import Daemon, render_toml, wait_until

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

@workflow(id="deploy.legacy")
async def legacy(input, ctx):
    await ctx.sleep(3600)
'''

# A fraud check inserted before the recorded "reserve": parked runs no longer replay.
V2_BROKEN = V1.replace(
    '    reserved = await ctx.step("reserve", note("reserve"))',
    '    await ctx.step("fraud_check", note("fraud_check"))\n'
    '    reserved = await ctx.step("reserve", note("reserve"))',
).split("@workflow(id=\"deploy.legacy\")")[0]  # and the legacy workflow is gone

# The fix: the new step goes after the wait, where no parked run has recorded anything yet.
V3_FIXED = V1.replace(
    '    shipped = await ctx.step("ship", note("ship"))',
    '    await ctx.step("fraud_check", note("fraud_check"))\n'
    '    shipped = await ctx.step("ship", note("ship"))',
)


def write_code(daemon: Daemon, name: str, source: str) -> Path:
    """One version of the module in a directory of its own (a fresh directory: no stale
    bytecode of an older version can be picked up) and a config that imports it."""
    where = daemon.root / name
    where.mkdir()
    (where / "deploy_wf.py").write_text(textwrap.dedent(source), encoding="utf-8")
    sections = {**daemon.sections,
                "workflows": {"paths": [str(where)], "modules": ["deploy_wf"]}}
    config = daemon.root / f"{name}.toml"
    config.write_text(render_toml(sections), encoding="utf-8")
    return config


def deploy(daemon: Daemon, name: str, source: str) -> None:
    """Point the daemon's config at a new version of the module."""
    write_code(daemon, name, source)
    daemon.sections["workflows"] = {"paths": [str(daemon.root / name)],
                                    "modules": ["deploy_wf"]}
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


async def check(daemon: Daemon, *args: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.to_thread(daemon.cli, "--json", "replay", "--check", *args)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    report: dict[str, Any] = orjson.loads(proc.stdout)
    return proc.returncode, report


async def test_export_and_replay_check_find_the_runs_a_change_breaks_before_the_deploy(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(start=False)
    deploy(daemon, "v1", V1)
    daemon.start()
    orders = [
        (await wf_json(daemon, "submit", "deploy.order", "--input",
                       orjson.dumps({"order": n}).decode()))["run_id"]
        for n in (1, 2, 3)
    ]
    legacy = (await wf_json(daemon, "submit", "deploy.legacy"))["run_id"]
    for run_id in [*orders, legacy]:
        await status_is(daemon, run_id, "waiting")
    await wf_json(daemon, "event", "send", "order.paid", "--payload",
                  orjson.dumps({"order": 3, "amount": 30}).decode())
    await status_is(daemon, orders[2], "completed")

    exported = daemon.root / "runs.json"
    proc = await asyncio.to_thread(daemon.cli, "export", orders[0], orders[2], legacy,
                                   "--out", str(exported))
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(exported.read_bytes())
    assert doc["format"] == "wf-journal/1"
    assert [r["run"]["run_id"] for r in doc["runs"]] == [orders[0], orders[2], legacy]
    done = doc["runs"][1]["entries"]
    assert [e["seq"] for e in done] == list(range(1, len(done) + 1))  # totally ordered
    assert [(e["type"], e.get("step_id") or e.get("wp_id")) for e in done] == [
        ("step", "reserve"), ("waitpoint", "event:order.paid:0"),
        ("resolution", "event:order.paid:0"), ("step", "ship")]

    broken = write_code(daemon, "v2", V2_BROKEN)
    fixed = write_code(daemon, "v3", V3_FIXED)
    code, report = await check(daemon, str(exported), "--config", str(broken))
    assert code == 1
    results = {r["run_id"]: r for r in report["runs"]}
    assert results[orders[0]]["result"] == "diverged"
    assert results[orders[0]]["entry"]["new"] == {"step_id": "fraud_check"}
    assert results[orders[2]]["result"] == "diverged"
    assert results[legacy]["result"] == "workflow_not_registered"
    assert (report["ok"], report["diverged"], report["not_registered"]) == (0, 2, 1)
    code, report = await check(daemon, str(exported), "--config", str(broken), "--fail-fast")
    assert code == 1 and report["checked"] == 1

    # Beside the live daemon: the in-flight runs of its database, read-only.
    code, report = await check(daemon, "--db", str(daemon.db_path), "--config", str(broken))
    assert code == 1
    assert {r["run_id"]: r["result"] for r in report["runs"]} == {
        orders[0]: "diverged", orders[1]: "diverged", legacy: "workflow_not_registered"}
    proc = await asyncio.to_thread(daemon.cli, "replay", "--check", "--db", str(daemon.db_path),
                                   "--config", str(fixed))
    assert proc.returncode == 0 and "3 checked: 3 ok" in proc.stdout, proc.stdout
    # The fix inserts its step after the wait: in-flight runs replay, but a run that already
    # completed past that point would not (which is why --db checks in-flight runs by default).
    code, report = await check(daemon, "--db", str(daemon.db_path), "--config", str(fixed),
                               "--status", "completed")
    assert code == 1
    (completed,) = report["runs"]
    assert (completed["run_id"], completed["result"]) == (orders[2], "diverged")
    assert completed["entry"]["unconsumed"]["step_ids"] == ["ship"]
    assert ledger(daemon) == ["reserve"] * 3 + ["ship"]  # no check ever ran a step
    # The daemon went on undisturbed.
    await wf_json(daemon, "event", "send", "order.paid", "--payload",
                  orjson.dumps({"order": 1, "amount": 10}).decode())
    await status_is(daemon, orders[0], "completed")


async def test_replay_check_of_a_foreign_file_names_the_file_and_the_problem(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(start=False)
    config = write_code(daemon, "v1", V1)
    cases = {
        "foreign.json": ({"format": "other/1", "runs": []}, "not a wf-journal export"),
        "newer.json": ({"format": "wf-journal/9", "runs": []}, "'wf-journal/9' is not one"),
        "partial.json": ({"format": "wf-journal/1", "runs": [{"run": {"run_id": "r"},
                                                              "entries": []}]},
                         "runs[0].run: field 'workflow_id' is missing"),
    }
    for name, (doc, message) in cases.items():
        path = daemon.root / name
        path.write_bytes(orjson.dumps(doc))
        proc = await asyncio.to_thread(daemon.cli, "replay", "--check", str(path),
                                       "--config", str(config))
        assert proc.returncode == 2, proc.stdout
        assert str(path) in proc.stderr and message in proc.stderr, proc.stderr


# The right way to add the fraud check before "reserve": behind a patch.
V2_PATCHED = V1.replace(
    '    reserved = await ctx.step("reserve", note("reserve"))',
    '    if await ctx.patched("fraud-check"):\n'
    '        await ctx.step("fraud_check", note("fraud_check"))\n'
    '    reserved = await ctx.step("reserve", note("reserve"))',
)


# Once no live run lacks the marker: the old branch goes, the call is deprecated ...
V3_DEPRECATED = V1.replace(
    '    reserved = await ctx.step("reserve", note("reserve"))',
    '    ctx.deprecate_patch("fraud-check")\n'
    '    await ctx.step("fraud_check", note("fraud_check"))\n'
    '    reserved = await ctx.step("reserve", note("reserve"))',
)
# ... and once no live run carries the marker, the call is removed too.
V4_REMOVED = V1.replace(
    '    reserved = await ctx.step("reserve", note("reserve"))',
    '    await ctx.step("fraud_check", note("fraud_check"))\n'
    '    reserved = await ctx.step("reserve", note("reserve"))',
)


async def test_a_patched_change_keeps_parked_runs_on_the_old_path_across_restarts(
    make_daemon: Callable[..., Daemon],
) -> None:
    """The patch lifecycle, one deploy (a daemon restart) per stage: pre-patch code, patched,
    deprecated, removed; removing it while a parked run still carries the marker holds that run
    until the deprecated code is back."""
    daemon = make_daemon(start=False)

    async def submit(order: int) -> str:
        run_id: str = (await wf_json(daemon, "submit", "deploy.order", "--input",
                                     orjson.dumps({"order": order}).decode()))["run_id"]
        await status_is(daemon, run_id, "waiting")
        return run_id

    async def pay(order: int) -> None:
        await wf_json(daemon, "event", "send", "order.paid", "--payload",
                      orjson.dumps({"order": order, "amount": order}).decode())

    async def patches() -> list[dict[str, Any]]:
        (listed,) = (await wf_json(daemon, "versions", "--workflow", "deploy.order"))[
            "workflows"]
        found: list[dict[str, Any]] = listed["patches"]
        return found

    async def completed(run_id: str) -> list[str]:
        shown = await status_is(daemon, run_id, "completed")
        assert shown["diverged"] is False
        return [s["step_id"] for s in shown["steps"]]

    deploy(daemon, "v1", V1)
    daemon.start()
    old = await submit(1)
    daemon.stop_cleanly()

    deploy(daemon, "v2", V2_PATCHED)
    daemon.start()
    new, new_too = await submit(2), await submit(3)
    daemon.restart()  # the new runs' marker is durable: they replay the new path
    (listed,) = (await wf_json(daemon, "versions", "--workflow", "deploy.order"))["workflows"]
    assert listed["live_runs"] == 3 and len(listed["versions"]) == 2  # two source hashes
    assert listed["patches"] == [{"patch_id": "fraud-check", "live_runs": 2}]
    await pay(1)
    assert await completed(old) == ["reserve", "ship"]  # the old path: no fraud check
    # No live run lacks the marker any more: time to deprecate.
    daemon.stop_cleanly()

    deploy(daemon, "v3", V3_DEPRECATED)
    daemon.start()
    newer = await submit(4)  # deprecated: a new run records no marker
    await pay(2)  # a journal with the marker replays on the deprecated code
    assert await completed(new) == ["patch:fraud-check", "fraud_check", "reserve", "ship"]
    assert await patches() == [{"patch_id": "fraud-check", "live_runs": 1}]
    daemon.stop_cleanly()

    deploy(daemon, "v4", V4_REMOVED)  # too early: new_too still carries the marker
    daemon.start()
    await pay(3)
    held = await status_is(daemon, new_too, "paused")
    assert held["error"]["code"] == "NONDETERMINISM"
    assert held["error"]["data"]["divergence"]["unconsumed"]["patch_ids"] == ["fraud-check"]
    await pay(4)  # a journal without the marker replays on the code without the call
    assert await completed(newer) == ["fraud_check", "reserve", "ship"]
    daemon.stop_cleanly()

    deploy(daemon, "v3-again", V3_DEPRECATED)  # the deprecated call back, until it drains
    daemon.start()
    await wf_json(daemon, "resume", new_too)
    assert await completed(new_too) == ["patch:fraud-check", "fraud_check", "reserve", "ship"]
    assert await patches() == []  # drained: the call can go now
    assert ledger(daemon) == [
        "reserve",  # old, v1
        "fraud_check", "reserve", "fraud_check", "reserve",  # new, new_too, v2
        "ship",  # old, v2
        "fraud_check", "reserve", "ship",  # newer, then new (v3)
        "ship",  # newer (v4)
        "ship",  # new_too, resumed on v3
    ]


PINNED_V1 = '''
from runtime import workflow

@workflow(id="deploy.pinned", version="1")
async def pinned_v1(input, ctx):
    got = await ctx.wait_for_event("go", match={"n": input["n"]})
    return ["v1", got["x"]]
'''

# An incompatible rewrite beside the old version: a step before the wait.
PINNED_V2_ONLY = '''
from runtime import workflow

@workflow(id="deploy.pinned", version="2")
async def pinned_v2(input, ctx):
    await ctx.step("prepare", lambda: "p")
    got = await ctx.wait_for_event("go", match={"n": input["n"]})
    return ["v2", got["x"]]
'''

PINNED_BOTH = PINNED_V1 + PINNED_V2_ONLY.replace("from runtime import workflow\n", "")


async def go(daemon: Daemon, n: int) -> None:
    await wf_json(daemon, "event", "send", "go", "--payload",
                  orjson.dumps({"n": n, "x": n * 10}).decode())


async def test_side_by_side_versions_pin_runs_and_a_missing_version_holds_them(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(start=False)
    deploy(daemon, "v1", PINNED_V1)
    daemon.start()

    async def submit(n: int, *flags: str) -> dict[str, Any]:
        run: dict[str, Any] = await wf_json(daemon, "submit", "deploy.pinned", "--input",
                                            orjson.dumps({"n": n}).decode(), *flags)
        await status_is(daemon, run["run_id"], "waiting")
        return run

    a = await submit(1)
    daemon.stop_cleanly()

    deploy(daemon, "both", PINNED_BOTH)
    daemon.start()
    b = await submit(2)  # the newest version
    c = await submit(3, "--version", "1")  # the old one, by name
    assert (a["workflow_version"], b["workflow_version"], c["workflow_version"]) == (
        "1", "2", "1")
    bad = await asyncio.to_thread(daemon.cli, "submit", "deploy.pinned", "--version", "9")
    assert bad.returncode == 1 and "INVALID_PARAMS" in bad.stderr and "1, 2" in bad.stderr
    await go(daemon, 1)
    await go(daemon, 2)
    assert (await status_is(daemon, a["run_id"], "completed"))["output"] == ["v1", 10]
    assert (await status_is(daemon, b["run_id"], "completed"))["output"] == ["v2", 20]
    daemon.stop_cleanly()

    deploy(daemon, "v2", PINNED_V2_ONLY)  # version 1 retired while c still runs on it
    daemon.start()
    await go(daemon, 3)
    held = await status_is(daemon, c["run_id"], "paused")
    assert held["error"]["code"] == "VERSION_MISSING"
    assert held["error"]["data"]["registered"] == ["2"]
    resumed = await wf_json(daemon, "resume", c["run_id"])  # still missing: held again
    assert resumed["status"] == "waiting"
    again = await status_is(daemon, c["run_id"], "paused")
    assert again["error"]["code"] == "VERSION_MISSING"
    daemon.stop_cleanly()

    deploy(daemon, "both-again", PINNED_BOTH)
    daemon.start()  # a daemon that has version 1 moves it again by itself
    assert (await status_is(daemon, c["run_id"], "completed"))["output"] == ["v1", 30]
