"""Flow control across two real ``wf daemon`` processes on one throwaway PostgreSQL (issue 20,
SPEC §2a/§13): admission is decided in the database, so a concurrency limit holds for the
cluster, a throttle spaces starts across daemons, a higher-priority queued run goes first
whichever daemon queued it, a killed daemon's slot frees once its run is adopted and ends,
a debounced key collapses into one run whichever daemon receives the submissions, the invoke
deadlock check counts an ancestor another daemon drives, ``get`` and ``stats`` show the groups
as the database counts them, and a cancel-in-progress newcomer takes the freed slot before
runs queued after it.

The workflows are :mod:`tests.e2e.flow_workflows` (a fsynced ledger of starts and ends)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_flow_control import WORKFLOWS, peak_per_key, read_ledger
from tests.pg import fetch

pytestmark = pytest.mark.slow

LEASE = 1.0


def _once_each(ledger: list[list[Any]]) -> None:
    """No run was driven by two daemons: one start and one end line per run."""
    lines = Counter((line[1], line[2]) for line in ledger)
    assert set(lines.values()) == {1}, [k for k, n in lines.items() if n > 1]


def _daemon(make_daemon: Callable[..., Daemon], url: str) -> Daemon:
    return make_daemon(storage={"url": url}, daemon={"lease": f"{LEASE}s"},
                       workflows=WORKFLOWS)


@pytest.fixture
def pair(make_daemon: Callable[..., Daemon], pg_url: str) -> tuple[Daemon, Daemon]:
    return _daemon(make_daemon, pg_url), _daemon(make_daemon, pg_url)


async def _submit_alternately(daemons: tuple[Daemon, ...], workflow_id: str,
                              inputs: list[dict[str, Any]]) -> list[str]:
    """Submit ``inputs`` at once, each to the next daemon in turn."""
    async def one(d: Daemon, i: dict[str, Any]) -> str:
        async with d.client() as c:
            return str((await c.submit(workflow_id, i))["run_id"])

    return list(await asyncio.gather(*(one(daemons[n % len(daemons)], i)
                                       for n, i in enumerate(inputs))))


async def _wait_all(d: Daemon, run_ids: list[str], timeout: float = 40) -> list[Any]:
    """The runs' records once all ended. Polled: a daemon's ``wait`` is woken only by the
    runs it drives itself (docs/decisions.md, issue 20 phase 2)."""
    async def ended() -> bool:
        statuses = await _statuses(d, run_ids)
        return all(s in ("completed", "failed", "cancelled") for s in statuses.values())

    await _until(ended, timeout, step=0.1)
    async with d.client() as c:
        return [await c.get(r) for r in run_ids]


async def _statuses(d: Daemon, run_ids: list[str]) -> dict[str, str]:
    async with d.client() as c:
        return {r: (await c.get(r))["status"] for r in run_ids}


async def _until(what: Callable[[], Any], timeout: float, step: float = 0.05) -> None:
    start = time.monotonic()
    while not await what():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s")
        await asyncio.sleep(step)


async def test_concurrency_one_holds_across_two_daemons_and_every_run_completes(
    pair: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.ndjson"
    inputs = [{"ledger": str(ledger), "key": "all", "nap": 0.1} for _ in range(12)]
    run_ids = await _submit_alternately(pair, "flow-one", inputs)
    done = await _wait_all(pair[0], run_ids)
    assert {run["status"] for run in done} == {"completed"}
    entries = read_ledger(ledger)
    peaks = peak_per_key(entries, {r["run_id"]: r["output"] for r in done}, -1, 0.0)
    assert peaks == {"all": 1}
    _once_each(entries)


async def test_a_keyed_concurrency_two_holds_per_key_across_two_daemons(
    pair: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.ndjson"
    inputs = [{"ledger": str(ledger), "key": f"k{n % 3}", "nap": 0.1} for n in range(24)]
    run_ids = await _submit_alternately(pair, "flow-pair", inputs)
    done = await _wait_all(pair[1], run_ids)
    assert {run["status"] for run in done} == {"completed"}
    entries = read_ledger(ledger)
    _once_each(entries)
    peaks = peak_per_key(entries, {r["run_id"]: r["output"] for r in done}, -1, 0.0)
    assert set(peaks) == {"k0", "k1", "k2"}
    assert max(peaks.values()) <= 2, peaks
    assert 2 in peaks.values()  # the limit was reached: the check had something to check


async def test_a_throttle_spaces_starts_across_two_daemons(
    pair: tuple[Daemon, Daemon], tmp_path: Path, pg_url: str
) -> None:
    """Throttle(1, 1s): four runs submitted to both daemons at once start a period apart."""
    ledger = tmp_path / "ledger.ndjson"
    inputs = [{"ledger": str(ledger), "key": "t"} for _ in range(4)]
    run_ids = await _submit_alternately(pair, "flow-spaced", inputs)
    done = await _wait_all(pair[0], run_ids, timeout=20)
    assert {run["status"] for run in done} == {"completed"}
    admitted = sorted(r[0] for r in await fetch(
        pg_url, "SELECT admitted_at FROM runs WHERE workflow_id = 'flow-spaced'"))
    assert len(admitted) == 4
    assert all(b - a >= 0.999 for a, b in itertools.pairwise(admitted)), admitted
    starts = sorted(run["started_at"] for run in done)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.8 for gap in gaps), gaps  # generous: a start follows its admission


async def test_a_higher_priority_queued_run_starts_before_older_ones_across_daemons(
    pair: tuple[Daemon, Daemon]
) -> None:
    a, b = pair
    async with a.client() as c:
        await c.submit("flow-queue", None, run_id="holder")
        while (await c.get("holder"))["status"] != "waiting":
            await asyncio.sleep(0.02)
    async with a.client() as c:
        await c.submit("flow-queue", None, run_id="low-a")
    async with b.client() as c:
        await c.submit("flow-queue", None, run_id="low-b")
        await c.submit("flow-queue", None, run_id="high", priority=5)
    queued = ["low-a", "low-b", "high"]
    assert set((await _statuses(a, queued)).values()) == {"pending"}
    order = []
    current = "holder"
    for _ in range(3):
        async with b.client() as c:  # the signal goes through either daemon
            await c.signal(current, "go", None)

        async def next_started(prev: str = current) -> bool:
            statuses = await _statuses(a, [*queued, prev])
            started = [r for r in queued if statuses[r] == "waiting"]
            return statuses[prev] == "completed" and len(started) == 1

        await _until(next_started, 15)
        statuses = await _statuses(a, queued)
        current = next(r for r in queued if statuses[r] == "waiting")
        order.append(current)
        queued.remove(current)
    async with a.client() as c:
        await c.signal(current, "go", None)
        assert (await c.wait(current, timeout=10))["status"] == "completed"
    assert order == ["high", "low-a", "low-b"]


async def test_a_killed_daemons_slot_frees_after_rescue(
    pair: tuple[Daemon, Daemon], tmp_path: Path, pg_url: str
) -> None:
    """kill -9 of the daemon whose run holds the one slot: the run queued on the other daemon
    waits (the dead daemon's run still holds the slot), the survivor adopts the holder, it
    completes, and the queued run starts there; never two at once."""
    a, b = pair
    ledger = tmp_path / "ledger.ndjson"
    async with a.client() as c:
        holder = (await c.submit("flow-one", {"ledger": str(ledger), "key": "all", "nap": 2.0}))
        while (await c.get(holder["run_id"]))["status"] != "waiting":
            await asyncio.sleep(0.02)
    async with b.client() as c:
        queued = await c.submit("flow-one", {"ledger": str(ledger), "key": "all", "nap": 0.1})
        await asyncio.sleep(0.3)
        assert (await c.get(queued["run_id"]))["status"] == "pending"
    assert a.proc is not None
    killed_pid = a.proc.pid
    a.kill()
    killed_at = time.time()
    run_ids = [holder["run_id"], queued["run_id"]]
    done = await _wait_all(b, run_ids, timeout=20)
    assert {run["status"] for run in done} == {"completed"}
    entries = read_ledger(ledger)
    peaks = peak_per_key(entries, {r["run_id"]: r["output"] for r in done}, killed_pid,
                         killed_at)
    assert peaks == {"all": 1}
    # The survivor finished both: their last executions ran in its process (an ended run is
    # nobody's, so the owner column no longer tells).
    assert b.proc is not None
    finishers = {run_id: pid for _key, run_id, what, _at, pid, _token in entries
                 if what == "end"}
    assert finishers == {r: b.proc.pid for r in run_ids}, entries
    owners = {r[0]: r[1] for r in await fetch(pg_url, "SELECT run_id, owner FROM runs")}
    assert owners == {r: None for r in run_ids}


async def test_debounce_collapses_submissions_to_both_daemons_into_one_run(
    pair: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.ndjson"
    a, b = pair
    answers = []
    for n, d in enumerate((a, b, a, b)):
        async with d.client() as c:
            answers.append(await c.submit("flow-debounced",
                                          {"ledger": str(ledger), "key": "k", "n": n}))
    assert len({x["run_id"] for x in answers}) == 1
    assert [x["debounced"] for x in answers] == [False, True, True, True]
    (done,) = await _wait_all(b, [answers[0]["run_id"]], timeout=15)
    assert done["status"] == "completed" and done["output"]["n"] == 3
    assert [line[1] for line in read_ledger(ledger)] == [answers[0]["run_id"]]


def _daemon_id(d: Daemon) -> str:
    (me,) = [x for x in json.loads(d.cli("--json", "daemons").stdout)["daemons"] if x["this"]]
    return str(me["daemon_id"])


async def _reached(d: Daemon, run_id: str, status: str, timeout: float = 15) -> None:
    async def there() -> bool:
        return (await _statuses(d, [run_id]))[run_id] == status

    await _until(there, timeout)


async def test_invoke_deadlock_counts_an_ancestor_driven_by_the_other_daemon(
    pair: tuple[Daemon, Daemon], pg_url: str
) -> None:
    """The grandparent holds the one 'flow-dl' slot on daemon a; its child, admitted by b's
    pump after a blocker ended there, is driven by b and invokes a run needing that slot:
    b's gate never saw the grandparent, the database did, so the invoke fails at once."""
    a, b = pair
    async with b.client() as c:
        await c.submit("flow-dl-middle", None, run_id="blocker")
    await _reached(b, "blocker", "waiting")
    async with a.client() as c:
        await c.submit("flow-dl-grand", {"child": "flow-dl-child"}, run_id="grand")

    async def middle_queued() -> list[Any]:
        return await fetch(pg_url, "SELECT run_id FROM runs WHERE parent_run_id = 'grand' "
                                   "AND status = 'pending'")

    await _until(middle_queued, 15)
    ((middle,),) = await middle_queued()
    async with b.client() as c:
        await c.signal("blocker", "go", None)
    await _reached(a, middle, "waiting")
    owners = dict(await fetch(pg_url, "SELECT run_id, owner FROM runs"))
    assert owners[middle] == _daemon_id(b) != owners["grand"]  # the case to check
    async with a.client() as c:
        await c.signal(middle, "go", None)
    done = await _wait_all(a, [middle, "grand"], timeout=15)
    assert [run["error"]["code"] for run in done] == ["CONCURRENCY_DEADLOCK"] * 2
    assert "flow-dl" in done[0]["error"]["message"]
    assert await fetch(pg_url, "SELECT run_id FROM runs WHERE workflow_id = 'flow-dl-child'") \
        == []


async def test_get_and_stats_show_the_groups_as_the_database_counts_them(
    pair: tuple[Daemon, Daemon]
) -> None:
    """A queued run's group and a group's holders and queue, asked of the daemon that
    neither drives the holder nor queued the run."""
    a, b = pair
    async with a.client() as c:
        await c.submit("flow-queue", None, run_id="holder")
    await _reached(a, "holder", "waiting")
    async with a.client() as c:
        await c.submit("flow-queue", None, run_id="queued-a")
    async with b.client() as c:
        await c.submit("flow-queue", None, run_id="queued-b")
    why = {"concurrency": {"group": "flow-queue", "limit": 1, "holders": 1}}
    async with a.client() as c:
        assert (await c.get("queued-b"))["pending"] == why
        assert (await c.stats())["flow"]["groups"] == {
            "flow-queue": {"holders": 1, "queued": 2, "limit": 1}}
    async with b.client() as c:
        assert (await c.get("queued-a"))["pending"] == why
        assert (await c.stats())["flow"]["groups"] == {
            "flow-queue": {"holders": 1, "queued": 2, "limit": 1}}
        shown = json.loads(b.cli("--json", "show", "queued-a").stdout)
        assert shown["pending"] == why
        for run_id in ("queued-a", "queued-b"):
            await c.cancel(run_id)
        await c.signal("holder", "go", None)
    done = await _wait_all(b, ["holder", "queued-a", "queued-b"])
    assert [run["status"] for run in done] == ["completed", "cancelled", "cancelled"]
    async with b.client() as c:
        assert (await c.stats())["flow"]["groups"] == {}


async def test_a_cancel_in_progress_newcomer_takes_the_slot_before_runs_queued_after_it(
    pair: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    """'old' holds the 'flow-swap' slot on a; 'new' (cancel-in-progress) is submitted to b
    and replaces it; while old's compensation runs, a priority-9 run of a queueing workflow
    of the same scope is queued on a. When old ends, new starts first."""
    a, b = pair
    gate, marker = tmp_path / "gate", tmp_path / "compensating"
    lasting = {"gate": str(gate), "marker": str(marker)}
    async with a.client() as c:
        await c.submit("flow-latest", lasting, run_id="old")
    await _reached(a, "old", "waiting")
    async with b.client() as c:
        await c.submit("flow-latest", {"gate": str(gate), "marker": str(tmp_path / "m2")},
                       run_id="new")
    await _until(lambda: asyncio.sleep(0, marker.exists()), 15)
    async with a.client() as c:
        await c.submit("flow-swap-queue", None, run_id="urgent", priority=9)
        assert (await c.get("urgent"))["status"] == "pending"
    gate.touch()

    async def one_started() -> bool:
        statuses = await _statuses(b, ["old", "new", "urgent"])
        return statuses["old"] == "cancelled" and "waiting" in statuses.values()

    await _until(one_started, 15)
    assert await _statuses(b, ["new", "urgent"]) == {"new": "waiting", "urgent": "pending"}
    async with b.client() as c:
        assert (await c.get("old"))["error"]["code"] == "CONCURRENCY_REPLACED"
        await c.signal("new", "go", None)
    await _reached(b, "urgent", "waiting")
    async with b.client() as c:
        await c.signal("urgent", "go", None)
    done = await _wait_all(a, ["new", "urgent"])
    assert [run["status"] for run in done] == ["completed", "completed"]
