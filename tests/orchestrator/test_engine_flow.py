"""Flow control enforced by the engine (SPEC §2a): concurrency groups, throttle windows,
debounce, priority, time to live and reschedule, over a real SQLite file.

Every test declares its workflows' options itself (:mod:`tests.orchestrator.flow_workflows`).
Runs that must hold a slot park on the signal ``go`` (a parked run keeps its slot), so the test
decides when each one ends; nothing here waits on a timer except where the SPEC names a period.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api import errors
from orchestrator.engine.engine import Engine
from orchestrator.engine.settings import Settings
from runtime import workflow
from runtime.flow import Concurrency, Debounce, Throttle
from runtime.workflow import WorkflowDefinition
from tests.orchestrator import flow_workflows as fw
from tests.orchestrator.conftest import GRACE, open_engine, reach, until

REACH_TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def _fresh_flow_state() -> Iterator[None]:
    fw.reset()
    yield
    fw.reset()


@contextlib.asynccontextmanager
async def flow_engine(
    db_path: Path, *definitions: WorkflowDefinition, settings: Settings | None = None
) -> AsyncIterator[Engine]:
    """One engine life on ``db_path`` with exactly these workflows registered."""
    async with open_engine(
        db_path, settings or Settings(shutdown_grace=GRACE), fw.registry(*definitions)
    ) as engine:
        yield engine


async def reached(engine: Engine, run_id: str, *statuses: str) -> dict[str, Any]:
    """The run's record once its status is one of ``statuses``; fails after 5 s."""
    try:
        return await asyncio.wait_for(reach(engine, run_id, *statuses), REACH_TIMEOUT)
    except TimeoutError:
        got = (await engine.get(run_id))["status"]
        pytest.fail(f"run {run_id} is {got}, never reached {statuses}")


async def hold(engine: Engine, workflow_id: str, run_id: str, **input: Any) -> None:
    """Submit a ``held`` run and wait until it holds its slot (parked on ``go``)."""
    await engine.submit(workflow_id, input, run_id=run_id)
    await reached(engine, run_id, "waiting")


async def finish(engine: Engine, run_id: str) -> dict[str, Any]:
    """Let a ``held`` run end; its record once completed."""
    await engine.signal(run_id, "go", run_id)
    done = await engine.wait(run_id, timeout=5)
    assert done["status"] == "completed", done
    return done


async def status(engine: Engine, run_id: str) -> str:
    got: str = (await engine.get(run_id))["status"]
    return got


# --- concurrency: limits and groups ---------------------------------------------------------------


@pytest.mark.both_backends
async def test_run_past_the_limit_waits_pending_and_starts_when_a_slot_frees(
    db_path: Path,
) -> None:
    two = fw.define("two", fw.held, concurrency=Concurrency(2))
    async with flow_engine(db_path, two) as engine:
        await hold(engine, "two", "a")
        await hold(engine, "two", "b")
        queued = await engine.submit("two", {}, run_id="c")
        assert queued["status"] == "pending"
        pending = (await engine.get("c"))["pending"]
        assert pending["concurrency"] == {"group": "two", "limit": 2, "holders": 2}
        assert fw.STARTED == ["a", "b"]

        await finish(engine, "a")
        await reached(engine, "c", "waiting")
        assert fw.STARTED == ["a", "b", "c"]
        await finish(engine, "b")
        await finish(engine, "c")
    assert fw.PEAK["two"] == 2


async def test_every_limit_of_a_list_must_have_room_for_a_run_to_start(db_path: Path) -> None:
    """[one per key, two in all]: a run waits while either of its groups is full."""
    both = fw.define(
        "both", fw.held, concurrency=[Concurrency(1, key=fw.by_k), Concurrency(2)]
    )
    async with flow_engine(db_path, both) as engine:
        await hold(engine, "both", "a1", k="a")
        await engine.submit("both", {"k": "a"}, run_id="a2")  # its key is full, the total not
        await hold(engine, "both", "b1", k="b")
        await engine.submit("both", {"k": "c"}, run_id="c1")  # its key is free, the total not
        assert await status(engine, "a2") == "pending"
        assert (await engine.get("a2"))["pending"]["concurrency"]["group"] == "both[a]"
        assert await status(engine, "c1") == "pending"
        assert (await engine.get("c1"))["pending"]["concurrency"]["group"] == "both"

        await finish(engine, "b1")  # frees the total: c1 may go, a2 is still held by a1
        await reached(engine, "c1", "waiting")
        assert await status(engine, "a2") == "pending"
        await finish(engine, "a1")
        await reached(engine, "a2", "waiting")
        assert fw.STARTED == ["a1", "b1", "c1", "a2"]
        await finish(engine, "a2")
        await finish(engine, "c1")


async def test_constant_key_puts_every_run_in_one_group_stored_on_the_run(
    db_path: Path,
) -> None:
    const = fw.define("const", fw.held, concurrency=Concurrency(1, key="tenant-1"))
    numeric = fw.define("numeric", fw.quick, concurrency=Concurrency(1, key=7))
    async with flow_engine(db_path, const, numeric) as engine:
        await hold(engine, "const", "x")
        queued = await engine.submit("const", {}, run_id="y")
        assert queued["flow"]["groups"] == [["const", "tenant-1"]]
        assert (await engine.get("y"))["pending"]["concurrency"]["group"] == "const[tenant-1]"
        await finish(engine, "x")
        await finish(engine, "y")
        run = await engine.submit("numeric", {}, run_id="n")
        assert run["flow"]["groups"] == [["numeric", "7"]]  # a number is stored as its JSON
        assert (await engine.wait("n", timeout=5))["status"] == "completed"


async def test_key_callable_is_called_once_per_submit_even_across_a_restart(
    db_path: Path,
) -> None:
    keyed = fw.define("keyed", fw.held, concurrency=Concurrency(1, key=fw.counted_key))
    async with flow_engine(db_path, keyed) as engine:
        await hold(engine, "keyed", "a1", k="a")
        await engine.submit("keyed", {"k": "a"}, run_id="a2")
        await engine.submit("keyed", {"k": "a"}, run_id="a3")
        await hold(engine, "keyed", "b1", k="b")
        stored = await engine.get("a2")
        assert stored["flow"]["groups"] == [["keyed", "a"]]
    assert fw.KEY_CALLS == {"a": 3, "b": 1}

    async with flow_engine(db_path, keyed) as engine:
        for run_id in ("a1", "b1"):
            await finish(engine, run_id)
        await reached(engine, "a2", "waiting")
        await finish(engine, "a2")
        await reached(engine, "a3", "waiting")
        await finish(engine, "a3")
    assert fw.KEY_CALLS == {"a": 3, "b": 1}  # recovery and starts read the stored key


async def test_named_scope_is_one_limit_across_the_workflows_that_declare_it(
    db_path: Path,
) -> None:
    crm = Concurrency(1, scope="crm-api")
    first = fw.define("sync-user", fw.held, concurrency=crm)
    second = fw.define("sync-org", fw.held, concurrency=crm)
    async with flow_engine(db_path, first, second) as engine:
        await hold(engine, "sync-user", "u")
        await engine.submit("sync-org", {}, run_id="o")
        pending = (await engine.get("o"))["pending"]
        assert pending["concurrency"] == {"group": "crm-api", "limit": 1, "holders": 1}
        await finish(engine, "u")
        await reached(engine, "o", "waiting")
        await finish(engine, "o")
        assert fw.STARTED == ["u", "o"]


# --- concurrency: strategies ----------------------------------------------------------------------


async def test_cancel_in_progress_newcomer_cancels_the_holder_after_its_compensations(
    db_path: Path,
) -> None:
    latest = fw.define(
        "latest", fw.held, concurrency=Concurrency(1, key=fw.by_k, strategy="cancel-in-progress")
    )
    async with flow_engine(db_path, latest) as engine:
        await hold(engine, "latest", "old", k="a")
        await hold(engine, "latest", "other-key", k="b")
        await engine.submit("latest", {"k": "a"}, run_id="new")
        replaced = await engine.wait("old", timeout=5)
        assert replaced["status"] == "cancelled"
        assert fw.COMPENSATED == ["old"]
        await reached(engine, "new", "waiting")
        assert await status(engine, "other-key") == "waiting"  # another group: untouched
        await finish(engine, "new")
        await finish(engine, "other-key")


async def test_cancel_in_progress_holder_ends_with_code_concurrency_replaced(
    db_path: Path,
) -> None:
    latest = fw.define(
        "latest", fw.held, concurrency=Concurrency(1, strategy="cancel-in-progress")
    )
    async with flow_engine(db_path, latest) as engine:
        await hold(engine, "latest", "old")
        await engine.submit("latest", {}, run_id="new")
        replaced = await engine.wait("old", timeout=5)
        await finish(engine, "new")
    assert replaced["status"] == "cancelled"
    assert replaced["error"]["code"] == "CONCURRENCY_REPLACED"


async def test_cancel_newest_newcomer_ends_cancelled_without_ever_running(
    db_path: Path,
) -> None:
    first = fw.define(
        "first-wins", fw.held, concurrency=Concurrency(1, strategy="cancel-newest")
    )
    async with flow_engine(db_path, first) as engine:
        await hold(engine, "first-wins", "holder")
        refused = await engine.submit("first-wins", {}, run_id="late")
        assert refused["status"] == "cancelled"
        assert refused["error"]["code"] == "CONCURRENCY_LIMIT"
        detail = await engine.get("late")
        assert (detail["started_at"], detail["steps"]) == (None, [])
        assert (await engine.wait("late", timeout=1))["status"] == "cancelled"
        await finish(engine, "holder")
        # With the slot free, the next newcomer runs.
        await hold(engine, "first-wins", "later")
        await finish(engine, "later")
    assert fw.STARTED == ["holder", "later"]


# --- concurrency: who goes next -------------------------------------------------------------------


async def test_queued_runs_start_round_robin_across_keys(db_path: Path) -> None:
    """One slot for the whole workflow: a key with three waiting runs takes turns with the
    keys that have one each."""
    shared = fw.define(
        "shared", fw.quick, concurrency=[Concurrency(1), Concurrency(10, key=fw.by_k)]
    )
    gate = fw.define("shared-holder", fw.held, concurrency=Concurrency(1, scope="shared"))
    async with flow_engine(db_path, shared, gate) as engine:
        await hold(engine, "shared-holder", "holder")
        order = [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c")]
        for run_id, key in order:
            await engine.submit("shared", {"k": key}, run_id=run_id)
        assert (await engine.stats())["flow"]["groups"]["shared"]["queued"] == 5
        await finish(engine, "holder")
        for run_id, _ in order:
            assert (await engine.wait(run_id, timeout=5))["status"] == "completed"
    assert fw.STARTED == ["holder", "a1", "b1", "c1", "a2", "a3"]


@pytest.mark.both_backends
async def test_within_a_key_higher_priority_starts_first_then_submission_order(
    db_path: Path,
) -> None:
    one = fw.define("one", fw.quick, concurrency=Concurrency(1))
    holder = fw.define("one-holder", fw.held, concurrency=Concurrency(1, scope="one"))
    async with flow_engine(db_path, one, holder) as engine:
        await hold(engine, "one-holder", "holder")
        submitted = [("low", -1000), ("zero-1", 0), ("top", 1000), ("five", 5), ("zero-2", 0),
                     ("minus", -5)]
        for run_id, priority in submitted:
            await engine.submit("one", {}, run_id=run_id, priority=priority)
        await finish(engine, "holder")
        for run_id, _ in submitted:
            assert (await engine.wait(run_id, timeout=5))["status"] == "completed"
    assert fw.STARTED == ["holder", "top", "five", "zero-1", "zero-2", "minus", "low"]


@pytest.mark.parametrize("priority", [-1001, 1001])
async def test_priority_outside_minus_1000_to_1000_is_invalid_params(
    db_path: Path, priority: int
) -> None:
    one = fw.define("one", fw.quick, concurrency=Concurrency(1))
    async with flow_engine(db_path, one) as engine:
        with pytest.raises(errors.InvalidParams) as info:
            await engine.submit("one", {}, priority=priority)
        assert info.value.code == "INVALID_PARAMS"
        assert info.value.data["field"] == "priority"
        assert (await engine.list())["runs"] == []
        for edge in (-1000, 1000):
            run = await engine.submit("one", {}, priority=edge)
            assert (await engine.wait(run["run_id"], timeout=5))["priority"] == edge


# --- concurrency: deploys and restarts ------------------------------------------------------------


async def test_lowered_limit_preempts_nothing_and_starts_no_run_until_below_it(
    db_path: Path,
) -> None:
    async with flow_engine(db_path, fw.define("pool", fw.held,
                                              concurrency=Concurrency(3))) as engine:
        for run_id in ("h1", "h2", "h3"):
            await hold(engine, "pool", run_id)
        await engine.submit("pool", {}, run_id="q1")
        await engine.submit("pool", {}, run_id="q2")

    lowered = fw.define("pool", fw.held, concurrency=Concurrency(1))
    async with flow_engine(db_path, lowered) as engine:
        for run_id in ("h1", "h2", "h3"):
            assert await status(engine, run_id) == "waiting"  # nobody preempted
        pending = (await engine.get("q1"))["pending"]["concurrency"]
        assert pending == {"group": "pool", "limit": 1, "holders": 3}
        await finish(engine, "h1")
        await finish(engine, "h2")
        # One holder left, limit one: still full.
        assert (await engine.get("q1"))["status"] == "pending"
        assert (await engine.get("q2"))["status"] == "pending"
        await finish(engine, "h3")
        await reached(engine, "q1", "waiting")
        assert await status(engine, "q2") == "pending"
        await finish(engine, "q1")
        await reached(engine, "q2", "waiting")
        await finish(engine, "q2")
    assert fw.STARTED == ["h1", "h2", "h3", "q1", "q2"]


async def test_raised_limit_starts_queued_runs_at_start_up(db_path: Path) -> None:
    async with flow_engine(db_path, fw.define("pool", fw.held,
                                              concurrency=Concurrency(1))) as engine:
        await hold(engine, "pool", "h")
        await engine.submit("pool", {}, run_id="q1")
        await engine.submit("pool", {}, run_id="q2")
        await engine.submit("pool", {}, run_id="q3")

    raised = fw.define("pool", fw.held, concurrency=Concurrency(3))
    async with flow_engine(db_path, raised) as engine:
        await reached(engine, "q1", "waiting")
        await reached(engine, "q2", "waiting")
        assert await status(engine, "q3") == "pending"
        for run_id in ("h", "q1", "q2"):
            await finish(engine, run_id)
        await reached(engine, "q3", "waiting")
        await finish(engine, "q3")
    assert fw.PEAK["pool"] == 3


async def test_queued_runs_keep_their_priority_order_across_a_restart(db_path: Path) -> None:
    one = fw.define("one", fw.quick, concurrency=Concurrency(1))
    holder = fw.define("one-holder", fw.held, concurrency=Concurrency(1, scope="one"))
    submitted = [("low", -3), ("mid", 0), ("high", 7), ("mid-2", 0)]
    async with flow_engine(db_path, one, holder) as engine:
        await hold(engine, "one-holder", "holder")
        for run_id, priority in submitted:
            await engine.submit("one", {}, run_id=run_id, priority=priority)
    async with flow_engine(db_path, one, holder) as engine:
        assert (await engine.stats())["flow"]["groups"]["one"]["queued"] == 4
        await finish(engine, "holder")
        for run_id, _ in submitted:
            assert (await engine.wait(run_id, timeout=5))["status"] == "completed"
    assert fw.STARTED == ["holder", "high", "mid", "mid-2", "low"]


async def test_slots_are_derived_from_stored_status_after_a_restart(db_path: Path) -> None:
    """Runs parked mid-body hold their slots through a restart; the queued ones start only
    as those end, and every run completes."""
    per_key = fw.define(
        "nap", fw.napping, concurrency=Concurrency(2, key=lambda i: i["label"])
    )
    runs = [(f"{key}{n}", key) for key in "ab" for n in range(5)]
    async with flow_engine(db_path, per_key) as engine:
        for run_id, key in runs:
            await engine.submit("nap", {"label": key, "nap": 0.2}, run_id=run_id)
        for run_id in ("a0", "a1", "b0", "b1"):
            await reached(engine, run_id, "waiting")
        assert fw.ACTIVE == {"a": 2, "b": 2}
        assert (await engine.stats())["flow"]["groups"]["nap[a]"] == {
            "holders": 2, "queued": 3, "limit": 2
        }

    async with flow_engine(db_path, per_key) as engine:
        for run_id, _ in runs:
            assert (await engine.wait(run_id, timeout=10))["status"] == "completed"
    assert fw.PEAK == {"a": 2, "b": 2}
    assert fw.ACTIVE == {"a": 0, "b": 0}
    assert sorted(fw.STARTED) == sorted(run_id for run_id, _ in runs)


async def test_invoking_a_child_into_a_group_the_parent_holds_full_fails_at_once(
    db_path: Path,
) -> None:
    s = Concurrency(1, scope="single")
    parent = fw.define("parent", fw.invoker_uncaught, concurrency=s)
    child = fw.define("child", fw.quick, concurrency=s)
    async with flow_engine(db_path, parent, child) as engine:
        await engine.submit("parent", {"child": "child"}, run_id="p")
        done = await engine.wait("p", timeout=5)
        assert done["status"] == "failed"
        assert done["error"]["code"] == "CONCURRENCY_DEADLOCK"
        assert "single" in done["error"]["message"]  # names the group
        assert [r["run_id"] for r in (await engine.list())["runs"]] == ["p"]  # no child


async def test_concurrency_deadlock_is_a_fatal_error_in_the_parent(db_path: Path) -> None:
    s = Concurrency(1, scope="single")
    parent = fw.define("parent", fw.invoker, concurrency=s)
    child = fw.define("child", fw.quick, concurrency=s)
    async with flow_engine(db_path, parent, child) as engine:
        await engine.submit("parent", {"child": "child"}, run_id="p")
        done = await engine.wait("p", timeout=5)
    assert done["status"] == "completed", done["error"]
    assert done["output"]["fatal"] == "CONCURRENCY_DEADLOCK"
    assert "single" in done["output"]["message"]  # names the group


async def test_invoke_deadlock_counts_the_slots_of_every_ancestor(db_path: Path) -> None:
    """The grandparent holds the only slot; the parent (no limit) invokes a child in it."""
    s = Concurrency(1, scope="single")
    grand = fw.define("grand", fw.invoker_uncaught, concurrency=s)
    middle = fw.define("middle", fw.invoker_uncaught)
    child = fw.define("child", fw.quick, concurrency=s)
    async with flow_engine(db_path, grand, middle, child) as engine:
        await engine.submit(
            "grand", {"child": "middle", "child_input": {"child": "child"}}, run_id="g"
        )
        done = await engine.wait("g", timeout=5)
        (mid,) = [r for r in (await engine.list())["runs"] if r["parent_run_id"] == "g"]
    assert done["status"] == "failed"
    assert done["error"]["code"] == "CONCURRENCY_DEADLOCK"
    assert mid["error"]["code"] == "CONCURRENCY_DEADLOCK"


async def test_child_queued_behind_another_run_starts_when_the_slot_frees(
    db_path: Path,
) -> None:
    s = Concurrency(1, scope="single")
    parent = fw.define("parent", fw.invoker_uncaught)
    child = fw.define("child", fw.quick, concurrency=s)
    other = fw.define("other", fw.held, concurrency=s)
    async with flow_engine(db_path, parent, child, other) as engine:
        await hold(engine, "other", "holder")
        await engine.submit("parent", {"child": "child", "child_input": 3}, run_id="p")
        await reached(engine, "p", "waiting")
        (kid,) = [r for r in (await engine.list())["runs"] if r["parent_run_id"] == "p"]
        assert (await engine.get(kid["run_id"]))["pending"]["concurrency"]["group"] == "single"
        await finish(engine, "holder")
        done = await engine.wait("p", timeout=5)
    assert (done["status"], done["output"]) == ("completed", 3)


async def test_invoking_a_child_into_a_group_with_room_runs_it(db_path: Path) -> None:
    s = Concurrency(2, scope="pair")
    parent = fw.define("parent", fw.invoker_uncaught, concurrency=s)
    child = fw.define("child", fw.quick, concurrency=s)
    async with flow_engine(db_path, parent, child) as engine:
        await engine.submit("parent", {"child": "child", "child_input": 5}, run_id="p")
        done = await engine.wait("p", timeout=5)
    assert (done["status"], done["output"]) == ("completed", 5)


# --- throttle -------------------------------------------------------------------------------------


async def test_throttled_starts_are_spaced_at_least_the_period_apart(db_path: Path) -> None:
    spaced = fw.define("spaced", fw.quick, throttle=Throttle(1, "0.2s"))
    async with flow_engine(db_path, spaced) as engine:
        for n in range(3):
            await engine.submit("spaced", {}, run_id=f"t{n}")
        second = (await engine.get("t1"))["pending"]
        assert second["throttled_until"] > (await engine.get("t1"))["created_at"]
        done = [await engine.wait(f"t{n}", timeout=5) for n in range(3)]
    starts = sorted(run["started_at"] for run in done)
    assert all(run["status"] == "completed" for run in done)
    # Spacing is decided at admission; the actor stamps started_at a moment later (jitter).
    assert [b - a >= 0.19 for a, b in itertools.pairwise(starts)] == [True, True], starts


async def test_burst_lets_that_many_start_at_once_and_spaces_the_rest(db_path: Path) -> None:
    """Throttle(4, 0.8s, burst=2): two at once, then one per 0.2 s."""
    bursty = fw.define("bursty", fw.quick, throttle=Throttle(4, "0.8s", burst=2))
    async with flow_engine(db_path, bursty) as engine:
        submitted = [await engine.submit("bursty", {}, run_id=f"b{n}") for n in range(4)]
        assert [run["scheduled_at"] is None for run in submitted] == [True, True, False, False]
        done = [await engine.wait(f"b{n}", timeout=5) for n in range(4)]
    starts = sorted(run["started_at"] for run in done)
    assert starts[2] - starts[0] >= 0.2 and starts[3] - starts[0] >= 0.4, starts


async def test_default_burst_is_the_limit(db_path: Path) -> None:
    """Throttle(2, 1h): two start at once, the third waits for the window."""
    pair = fw.define("pair", fw.quick, throttle=Throttle(2, "1h"))
    async with flow_engine(db_path, pair) as engine:
        for n in range(3):
            await engine.submit("pair", {}, run_id=f"p{n}")
        first = await engine.wait("p0", timeout=5)
        assert (await engine.wait("p1", timeout=5))["status"] == "completed"
        waiting = (await engine.get("p2"))["pending"]
        assert waiting["throttled_until"] == pytest.approx(first["started_at"] + 3600, abs=1)


async def test_throttled_run_holds_no_concurrency_slot(db_path: Path) -> None:
    """One slot for the workflow, one start per hour per throttle key: a run waiting for its
    key's window does not keep another key's run out of the slot."""
    both = fw.define(
        "both", fw.held, concurrency=Concurrency(1), throttle=Throttle(1, "1h", key=fw.by_k)
    )
    async with flow_engine(db_path, both) as engine:
        await hold(engine, "both", "a1", k="a")
        await engine.submit("both", {"k": "a"}, run_id="a2")  # throttled for an hour
        await engine.submit("both", {"k": "b"}, run_id="b1")  # queued behind a1
        assert "throttled_until" in (await engine.get("a2"))["pending"]
        assert "concurrency" in (await engine.get("b1"))["pending"]
        await finish(engine, "a1")
        await reached(engine, "b1", "waiting")
        assert await status(engine, "a2") == "pending"
        groups = (await engine.stats())["flow"]["groups"]
        assert groups["both"] == {"holders": 1, "queued": 0, "limit": 1}
        await finish(engine, "b1")
        assert await status(engine, "a2") == "pending"


async def test_queued_run_whose_turn_comes_in_a_full_window_gives_the_slot_back(
    db_path: Path,
) -> None:
    """One slot, two starts per hour: the third run is queued while the window still has
    room; by its turn the window is full, so it waits for the window holding no slot."""
    both = fw.define("both", fw.held, concurrency=Concurrency(1), throttle=Throttle(2, "1h"))
    async with flow_engine(db_path, both) as engine:
        await hold(engine, "both", "r1")
        await engine.submit("both", {}, run_id="r2")
        await engine.submit("both", {}, run_id="r3")
        assert "concurrency" in (await engine.get("r3"))["pending"]
        await finish(engine, "r1")
        await reached(engine, "r2", "waiting")
        await finish(engine, "r2")

        async def throttled() -> bool:
            return "throttled_until" in (await engine.get("r3"))["pending"]

        await until(throttled, "r3 waits for the window")
        assert "concurrency" not in (await engine.get("r3"))["pending"]
        assert (await engine.stats())["flow"]["groups"] == {}
    assert fw.STARTED == ["r1", "r2"]


async def test_throttle_window_survives_a_restart(db_path: Path) -> None:
    hourly = fw.define("hourly", fw.quick, throttle=Throttle(1, "1h"))
    async with flow_engine(db_path, hourly) as engine:
        await engine.submit("hourly", {}, run_id="first")
        first = await engine.wait("first", timeout=5)
    async with flow_engine(db_path, hourly) as engine:
        second = await engine.submit("hourly", {}, run_id="second")
        assert second["status"] == "pending"
        waiting = (await engine.get("second"))["pending"]
        assert waiting["throttled_until"] == pytest.approx(first["started_at"] + 3600, abs=1)
    assert fw.STARTED == ["first"]


@pytest.mark.both_backends
async def test_runs_throttled_on_one_key_are_given_successive_start_times(
    db_path: Path,
) -> None:
    hourly = fw.define("hourly", fw.quick, throttle=Throttle(1, "1h"))
    async with flow_engine(db_path, hourly) as engine:
        first = await engine.submit("hourly", {}, run_id="h0")
        second = await engine.submit("hourly", {}, run_id="h1")
        third = await engine.submit("hourly", {}, run_id="h2")
        assert first["scheduled_at"] is None
        assert third["scheduled_at"] >= second["scheduled_at"] + 3600


# --- debounce -------------------------------------------------------------------------------------


@pytest.mark.both_backends
async def test_debounced_submissions_collapse_into_one_run_keeping_the_last_input(
    db_path: Path,
) -> None:
    calm = fw.define("calm", fw.quick, debounce=Debounce("0.3s", key=fw.by_k))
    async with flow_engine(db_path, calm) as engine:
        first = await engine.submit("calm", {"k": "a", "n": 1})
        assert (first["status"], first["debounced"]) == ("pending", False)
        assert first["scheduled_at"] == pytest.approx(first["created_at"] + 0.3)
        second = await engine.submit("calm", {"k": "a", "n": 2})
        other = await engine.submit("calm", {"k": "b", "n": 1})  # another key: its own run
        third = await engine.submit("calm", {"k": "a", "n": 3})
        assert second["run_id"] == third["run_id"] == first["run_id"] != other["run_id"]
        assert second["debounced"] is True and third["debounced"] is True
        assert third["scheduled_at"] >= second["scheduled_at"] >= first["scheduled_at"]
        done = await engine.wait(first["run_id"], timeout=5)
        assert (done["status"], done["output"]) == ("completed", {"k": "a", "n": 3})
        assert done["started_at"] >= third["scheduled_at"]
        assert (await engine.wait(other["run_id"], timeout=5))["status"] == "completed"
        assert len((await engine.list())["runs"]) == 2
    assert sorted(fw.STARTED) == sorted([other["run_id"], first["run_id"]])


async def test_leading_debounce_keeps_the_first_input(db_path: Path) -> None:
    lead = fw.define("lead", fw.quick, debounce=Debounce("0.2s", mode="leading"))
    async with flow_engine(db_path, lead) as engine:
        first = await engine.submit("lead", {"n": 1})
        for n in (2, 3):
            assert (await engine.submit("lead", {"n": n}))["run_id"] == first["run_id"]
        done = await engine.wait(first["run_id"], timeout=5)
    assert done["output"] == {"n": 1}
    assert [first["run_id"]] == fw.STARTED


async def test_max_wait_caps_how_far_collapsed_submissions_push_the_start(
    db_path: Path,
) -> None:
    capped = fw.define("capped", fw.quick, debounce=Debounce("0.3s", max_wait="0.4s"))
    async with flow_engine(db_path, capped) as engine:
        first = await engine.submit("capped", {"n": 0})
        cap = first["created_at"] + 0.4
        n = 0
        while (await engine.get(first["run_id"]))["status"] == "pending":
            n += 1
            moved = await engine.submit("capped", {"n": n})
            if moved["run_id"] != first["run_id"]:
                break  # the run started between the read and this submission
            assert moved["scheduled_at"] <= cap + 1e-6
            await asyncio.sleep(0.05)
        done = await engine.wait(first["run_id"], timeout=5)
    assert done["status"] == "completed"
    assert n >= 4  # submissions kept coming past the period: only max_wait let it start
    assert done["started_at"] >= cap


async def test_concurrent_submissions_with_one_debounce_key_collapse_into_one_run(
    db_path: Path,
) -> None:
    calm = fw.define("calm", fw.quick, debounce=Debounce("0.2s", key=fw.by_k))
    async with flow_engine(db_path, calm) as engine:
        runs = await asyncio.gather(
            *(engine.submit("calm", {"k": "a", "n": n}) for n in range(5))
        )
        assert len({run["run_id"] for run in runs}) == 1
        assert sorted(run["debounced"] for run in runs) == [False, True, True, True, True]


async def test_cancelled_debounced_run_lets_the_next_submission_start_a_new_one(
    db_path: Path,
) -> None:
    calm = fw.define("calm", fw.quick, debounce=Debounce("0.2s", key=fw.by_k))
    async with flow_engine(db_path, calm) as engine:
        first = await engine.submit("calm", {"k": "a", "n": 1})
        cancelled = await engine.cancel(first["run_id"])
        assert (cancelled["status"], cancelled["started_at"]) == ("cancelled", None)
        second = await engine.submit("calm", {"k": "a", "n": 2})
        assert (second["debounced"], second["run_id"] != first["run_id"]) == (False, True)
        assert (await engine.wait(second["run_id"], timeout=5))["output"] == {"k": "a", "n": 2}
    assert [second["run_id"]] == fw.STARTED


async def test_submission_after_the_debounced_run_started_starts_a_new_debounce(
    db_path: Path,
) -> None:
    calm = fw.define("calm", fw.held, debounce=Debounce("0.05s"))
    async with flow_engine(db_path, calm) as engine:
        first = await engine.submit("calm", {"n": 1})
        await reached(engine, first["run_id"], "waiting")
        second = await engine.submit("calm", {"n": 2})
        assert second["run_id"] != first["run_id"]
        assert (second["status"], second["debounced"]) == ("pending", False)
        third = await engine.submit("calm", {"n": 3})
        assert (third["run_id"], third["debounced"]) == (second["run_id"], True)
        await finish(engine, first["run_id"])
        await reached(engine, second["run_id"], "waiting")
        assert (await engine.get(second["run_id"]))["input"] == {"n": 3}
        await finish(engine, second["run_id"])




@pytest.mark.parametrize(
    ("mode", "key"),
    [("trailing", "tenant"), ("leading", "tenant"),
     pytest.param("trailing", None, id="trailing-unkeyed")],
)
@pytest.mark.both_backends
async def test_restart_inside_the_debounce_period_neither_loses_nor_doubles_the_run(
    db_path: Path, mode: str, key: str | None
) -> None:
    # The period must outlast a restart on a loaded machine (0.3 s did not, once, in CI-like
    # load: the run started before the third submission).
    debounce = Debounce("1.5s", key=key, mode=mode)  # type: ignore[arg-type]
    calm = fw.define("calm", fw.quick, debounce=debounce)
    async with flow_engine(db_path, calm) as engine:
        first = await engine.submit("calm", {"n": 1})
        await engine.submit("calm", {"n": 2})
    async with flow_engine(db_path, calm) as engine:
        # The restored debounce still collapses new submissions into the stored run.
        again = await engine.submit("calm", {"n": 3})
        assert (again["run_id"], again["debounced"]) == (first["run_id"], True)
        done = await engine.wait(first["run_id"], timeout=5)
        assert len((await engine.list())["runs"]) == 1
    assert done["output"] == ({"n": 3} if mode == "trailing" else {"n": 1})
    assert [first["run_id"]] == fw.STARTED


async def test_debounced_run_due_during_downtime_starts_once_on_restart(db_path: Path) -> None:
    calm = fw.define("calm", fw.quick, debounce=Debounce("0.1s"))
    async with flow_engine(db_path, calm) as engine:
        first = await engine.submit("calm", {"n": 1})
        await engine.submit("calm", {"n": 2})
    await asyncio.sleep(0.15)  # its start time passes while no engine runs
    async with flow_engine(db_path, calm) as engine:
        done = await engine.wait(first["run_id"], timeout=5)
        assert len((await engine.list())["runs"]) == 1
    assert done["output"] == {"n": 2}
    assert [first["run_id"]] == fw.STARTED


# --- time to live, reschedule, resume -------------------------------------------------------------


async def test_queued_run_past_its_ttl_ends_expired_without_ever_holding_a_slot(
    db_path: Path,
) -> None:
    one = fw.define("one", fw.held, concurrency=Concurrency(1))
    async with flow_engine(db_path, one) as engine:
        await hold(engine, "one", "holder")
        queued = await engine.submit("one", {}, run_id="short", ttl=0.1)
        assert queued["expires_at"] == pytest.approx(queued["created_at"] + 0.1)
        await engine.submit("one", {}, run_id="patient")
        expired = await engine.wait("short", timeout=5)
        assert expired["status"] == "cancelled"
        assert expired["error"]["code"] == "EXPIRED"
        assert expired["started_at"] is None
        assert (await engine.get("short"))["steps"] == []
        await finish(engine, "holder")
        await reached(engine, "patient", "waiting")  # the slot went past the expired run
        await finish(engine, "patient")
    assert fw.STARTED == ["holder", "patient"]


async def test_queued_run_whose_ttl_passed_while_stopped_expires_at_start(
    db_path: Path,
) -> None:
    one = fw.define("one", fw.held, concurrency=Concurrency(1))
    async with flow_engine(db_path, one) as engine:
        await hold(engine, "one", "holder")
        await engine.submit("one", {}, run_id="short", ttl=0.1)
    await asyncio.sleep(0.15)
    async with flow_engine(db_path, one) as engine:
        expired = await engine.wait("short", timeout=5)
        assert (expired["status"], expired["error"]["code"]) == ("cancelled", "EXPIRED")
        await finish(engine, "holder")
    assert fw.STARTED == ["holder"]


async def test_start_timeout_of_the_workflow_is_a_default_ttl(db_path: Path) -> None:
    one = fw.define("one", fw.held, concurrency=Concurrency(1), start_timeout=0.1)
    async with flow_engine(db_path, one) as engine:
        await hold(engine, "one", "holder")
        queued = await engine.submit("one", {}, run_id="late")
        assert queued["expires_at"] == pytest.approx(queued["created_at"] + 0.1)
        expired = await engine.wait("late", timeout=5)
        assert (expired["status"], expired["error"]["code"]) == ("cancelled", "EXPIRED")
        await finish(engine, "holder")
    assert fw.STARTED == ["holder"]


async def test_throttled_run_past_its_ttl_ends_expired(db_path: Path) -> None:
    hourly = fw.define("hourly", fw.quick, throttle=Throttle(1, "1h"))
    async with flow_engine(db_path, hourly) as engine:
        await engine.submit("hourly", {}, run_id="h0")
        await engine.submit("hourly", {}, run_id="h1", ttl=0.1)
        expired = await engine.wait("h1", timeout=5)
    assert (expired["status"], expired["error"]["code"]) == ("cancelled", "EXPIRED")
    assert fw.STARTED == ["h0"]


async def test_ttl_counts_from_when_a_delayed_run_is_due(db_path: Path) -> None:
    """Delay 0.2 s, ttl 0.1 s: created 0.2 s before it may start, yet not expired."""
    plain = fw.define("plain", fw.quick, concurrency=Concurrency(5))
    async with flow_engine(db_path, plain) as engine:
        run = await engine.submit("plain", {}, run_id="d", delay=0.2, ttl=0.1)
        assert run["expires_at"] == pytest.approx(run["scheduled_at"] + 0.1)
        assert (await engine.get("d"))["pending"] == {
            "delayed_until": run["scheduled_at"], "expires_at": run["expires_at"]
        }
        done = await engine.wait("d", timeout=5)
    assert done["status"] == "completed"
    assert done["started_at"] >= run["scheduled_at"]


async def test_reschedule_moves_a_pending_run_by_delay_and_to_a_time(db_path: Path) -> None:
    plain = fw.define("plain", fw.quick)
    async with flow_engine(db_path, plain) as engine:
        run = await engine.submit("plain", {}, run_id="later", delay=3600, ttl=60)
        moved = await engine.reschedule("later", delay=7200)
        assert moved["status"] == "pending"
        assert moved["scheduled_at"] >= run["scheduled_at"] + 3600 - 1
        assert moved["expires_at"] == pytest.approx(moved["scheduled_at"] + 60)
        soon = await engine.reschedule("later", at=moved["created_at"] + 0.1)
        assert soon["scheduled_at"] == pytest.approx(moved["created_at"] + 0.1)
        done = await engine.wait("later", timeout=5)
        assert done["status"] == "completed"
        assert done["started_at"] >= soon["scheduled_at"]
        with pytest.raises(errors.RunNotActive):
            await engine.reschedule("later", delay=1)


async def test_resume_of_a_delayed_pending_run_starts_it_now(db_path: Path) -> None:
    plain = fw.define("plain", fw.quick)
    async with flow_engine(db_path, plain) as engine:
        await engine.submit("plain", {}, run_id="later", delay=3600)
        await engine.resume("later")
        done = await engine.wait("later", timeout=5)
    assert done["status"] == "completed"


async def test_resume_of_a_delayed_run_still_respects_its_concurrency_group(
    db_path: Path,
) -> None:
    one = fw.define("one", fw.held, concurrency=Concurrency(1))
    async with flow_engine(db_path, one) as engine:
        await hold(engine, "one", "holder")
        await engine.submit("one", {}, run_id="later", delay=3600)
        resumed = await engine.resume("later")
        assert resumed["status"] == "pending"
        assert (await engine.get("later"))["pending"]["concurrency"]["group"] == "one"
        await finish(engine, "holder")
        await reached(engine, "later", "waiting")
        await finish(engine, "later")


# --- what a pending run waits for -----------------------------------------------------------------


async def test_get_of_a_pending_run_says_why_it_waits(db_path: Path) -> None:
    one = fw.define("one", fw.held, concurrency=Concurrency(1, key=fw.by_k))
    hourly = fw.define("hourly", fw.quick, throttle=Throttle(1, "1h"))
    calm = fw.define("calm", fw.quick, debounce=Debounce("1h", key=fw.by_k))
    async with flow_engine(db_path, one, hourly, calm) as engine:
        await hold(engine, "one", "holder", k="x")
        queued = await engine.submit("one", {"k": "x"}, run_id="queued", ttl=3600)
        assert (await engine.get("queued"))["pending"] == {
            "concurrency": {"group": "one[x]", "limit": 1, "holders": 1},
            "expires_at": queued["expires_at"],
        }
        await engine.submit("hourly", {}, run_id="h0")
        throttled = await engine.submit("hourly", {}, run_id="h1")
        assert (await engine.get("h1"))["pending"] == {
            "throttled_until": throttled["scheduled_at"]
        }
        debounced = await engine.submit("calm", {"k": "z"}, run_id="c")
        assert (await engine.get("c"))["pending"] == {
            "debounced_until": debounced["scheduled_at"]
        }
        delayed = await engine.submit("one", {"k": "y"}, run_id="d", delay=3600)
        assert (await engine.get("d"))["pending"] == {"delayed_until": delayed["scheduled_at"]}
        assert "pending" not in await engine.get("holder")
        await finish(engine, "holder")


async def test_get_of_an_unkeyed_debounced_run_says_debounced(db_path: Path) -> None:
    calm = fw.define("calm", fw.quick, debounce=Debounce("1h"))
    async with flow_engine(db_path, calm) as engine:
        debounced = await engine.submit("calm", {}, run_id="c")
        assert (await engine.get("c"))["pending"] == {
            "debounced_until": debounced["scheduled_at"]
        }


async def test_stats_count_holders_and_queued_runs_per_group(db_path: Path) -> None:
    keyed = fw.define("keyed", fw.held, concurrency=Concurrency(1, key=fw.by_k))
    async with flow_engine(db_path, keyed) as engine:
        await hold(engine, "keyed", "a1", k="a")
        await hold(engine, "keyed", "b1", k="b")
        for n in (2, 3, 4):
            await engine.submit("keyed", {"k": "a"}, run_id=f"a{n}")
        await engine.submit("keyed", {"k": "b"}, run_id="b2")
        groups = (await engine.stats())["flow"]["groups"]
        assert groups == {
            "keyed[a]": {"holders": 1, "queued": 3, "limit": 1},
            "keyed[b]": {"holders": 1, "queued": 1, "limit": 1},
        }
        await engine.cancel("a4")
        assert (await engine.get("a4"))["status"] == "cancelled"
        groups = (await engine.stats())["flow"]["groups"]
        assert groups["keyed[a]"]["queued"] == 2
        for run_id in ("a1", "b1"):
            await finish(engine, run_id)
        for run_id in ("a2", "b2"):
            await reached(engine, run_id, "waiting")
            await finish(engine, run_id)
        await reached(engine, "a3", "waiting")
        await finish(engine, "a3")
        assert (await engine.stats())["flow"]["groups"] == {}
    assert "a4" not in fw.STARTED


# --- bad options and bad keys ---------------------------------------------------------------------


def _lambda_key(i: Any) -> Any:
    return i


@pytest.mark.parametrize(
    ("options", "option", "value"),
    [
        ({"concurrency": Concurrency(0)}, "limit", "0"),
        ({"concurrency": [Concurrency(2), Concurrency(-1, key=_lambda_key)]}, "limit", "-1"),
        ({"concurrency": Concurrency(1, strategy="drop")}, "strategy", "'drop'"),  # type: ignore[arg-type]
        ({"concurrency": Concurrency(1, key=["a"])}, "key", "['a']"),  # type: ignore[arg-type]
        ({"concurrency": Concurrency(1, key=True)}, "key", "True"),
        ({"concurrency": [Concurrency(1, scope="s"), Concurrency(2, scope="s")]},
         "concurrency", "'s'"),
        ({"concurrency": [Concurrency(1, key=_lambda_key), Concurrency(2, key="k")]},
         "concurrency", "give it a scope= of its own"),
        ({"throttle": Throttle(0, "1s")}, "limit", "0"),
        ({"throttle": Throttle(1, -1)}, "period", "-1"),
        ({"throttle": Throttle(1, "0s")}, "period", "'0s'"),
        ({"throttle": Throttle(2, "1s", burst=3)}, "burst", "3"),
        ({"throttle": Throttle(1, "1s", key={"a": 1})}, "key", "{'a': 1}"),  # type: ignore[arg-type]
        ({"debounce": Debounce(-0.5)}, "period", "-0.5"),
        ({"debounce": Debounce("5s", max_wait="1s")}, "max_wait", "'1s'"),
        ({"debounce": Debounce("5s", mode="sideways")}, "mode", "'sideways'"),  # type: ignore[arg-type]
        ({"debounce": Debounce("5s", key=b"k")}, "key", "b'k'"),  # type: ignore[arg-type]
        ({"start_timeout": -1}, "start_timeout", "-1"),
    ],
    ids=lambda v: None if isinstance(v, dict) else str(v),
)
def test_bad_option_at_registration_is_a_value_error_naming_workflow_option_and_value(
    options: dict[str, Any], option: str, value: str
) -> None:
    with pytest.raises(ValueError) as info:
        workflow(id="flow-bad", **options)
    message = str(info.value)
    assert "'flow-bad'" in message
    assert option in message
    assert value in message


def test_explicit_scope_equal_to_the_workflow_id_is_the_same_scope_as_none() -> None:
    with pytest.raises(ValueError, match="flow-same-scope"):
        workflow(id="flow-same-scope",
                 concurrency=[Concurrency(1), Concurrency(5, scope="flow-same-scope")])




def _raises(run_input: Any) -> Any:
    raise KeyError("user_id")


@pytest.mark.parametrize(
    ("options", "option", "detail"),
    [
        ({"concurrency": Concurrency(1, key=_raises)}, "concurrency[0]", "KeyError"),
        ({"concurrency": [Concurrency(2), Concurrency(1, key=lambda i: ["a"])]},
         "concurrency[1]", "['a']"),
        pytest.param({"concurrency": Concurrency(1, key=lambda i: math.nan)}, "concurrency[0]",
                     "nan", id="nan"),
        ({"concurrency": Concurrency(1, key=lambda i: True)}, "concurrency[0]", "True"),
        ({"throttle": Throttle(1, "1s", key=lambda i: {"a": 1})}, "throttle", "{'a': 1}"),
        ({"debounce": Debounce("1s", key=_raises)}, "debounce", "KeyError"),
        pytest.param({"debounce": Debounce("1s", key=lambda i: math.inf)}, "debounce", "inf",
                     id="inf"),
    ],
    ids=["raises", "list", "nan", "bool", "dict", "debounce-raises", "inf"],
)
async def test_key_callable_that_fails_or_returns_a_non_key_rejects_the_submit(
    db_path: Path, options: dict[str, Any], option: str, detail: str
) -> None:
    bad = fw.define("badkey", fw.quick, **options)
    async with flow_engine(db_path, bad) as engine:
        with pytest.raises(errors.ValidationFailed) as info:
            await engine.submit("badkey", {"user": 1})
        assert info.value.code == "VALIDATION"
        message = str(info.value)
        assert "'badkey'" in message and option in message and detail in message
        assert (await engine.list())["runs"] == []
        assert (await engine.stats())["runs"] == {}
