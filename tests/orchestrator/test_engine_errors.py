"""Failures below the engine: a bug in an actor fails that run only (``INTERNAL``), and a storage
error reaches the caller with the code that says whose fault it is, never as ``INTERNAL``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import storage
from orchestrator.api import errors
from orchestrator.engine.engine import Engine
from tests.orchestrator.conftest import FaultyStorage, reach


def _step_of(run_id: str):
    def when(batch: Sequence[Any]) -> bool:
        return any(isinstance(op, storage.RecordStepAttempt) and op.run_id == run_id
                   for op in batch)

    return when


async def test_engine_error_in_an_actor_fails_that_run_internal_and_the_engine_serves_on(
    engine: Engine, store: FaultyStorage
) -> None:
    await engine.submit("signal", None, run_id="bystander")
    await reach(engine, "bystander", "waiting")
    store.fail("commit", RuntimeError("disk controller on fire"), when=_step_of("boom"))
    await engine.submit("echo", 1, run_id="boom")
    failed = await engine.wait("boom", timeout=5)
    assert store.armed == 0
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "INTERNAL"
    assert "disk controller on fire" in failed["error"]["message"]
    assert (await engine.stats())["actors"]["actor_failures"] == 1
    # Other runs, parked or new, are untouched.
    await engine.submit("echo", 2, run_id="after")
    assert (await engine.wait("after", timeout=5))["output"] == {"echo": 2}
    await engine.signal("bystander", "finish", "still here")
    assert (await engine.wait("bystander", timeout=5))["output"] == "still here"


@pytest.mark.parametrize(
    "raised",
    [storage.StorageFull("database or disk is full"), storage.StorageBusy("database is locked")],
    ids=["full", "busy"],
)
async def test_transient_storage_error_in_an_actor_retries_the_run_instead_of_failing_it(
    engine: Engine, store: FaultyStorage, raised: storage.StorageError
) -> None:
    """Nothing of the refused batch was committed: the run goes on from its journal a moment
    later and completes; it is not failed ``INTERNAL``."""
    store.fail("commit", raised, when=_step_of("r"))
    await engine.submit("echo", 1, run_id="r")
    done = await engine.wait("r", timeout=10)
    assert store.armed == 0
    assert done["status"] == "completed", done
    assert done["output"] == {"echo": 1}
    assert (await engine.stats())["actors"]["actor_failures"] == 0


@pytest.mark.parametrize(
    ("raised", "expected", "code"),
    [
        (storage.StorageFull("database or disk is full"), errors.StorageFull, "STORAGE_FULL"),
        (storage.StorageBusy("database is locked"), errors.StorageBusy, "STORAGE_BUSY"),
        (storage.InvalidOperation("not JSON"), errors.Rejected, "VALIDATION"),
    ],
    ids=["full", "busy", "invalid"],
)
async def test_storage_error_at_submit_reaches_the_caller_with_its_code(
    engine: Engine,
    store: FaultyStorage,
    raised: storage.StorageError,
    expected: type[errors.ServiceError],
    code: str,
) -> None:
    store.fail("create_run", raised)
    with pytest.raises(expected) as info:
        await engine.submit("echo", 1, run_id="r")
    assert info.value.code == code
    assert info.value.__cause__ is raised
    assert (await engine.list())["runs"] == []  # nothing was committed
    await engine.submit("echo", 1, run_id="r")  # the next try goes through
    assert (await engine.wait("r", timeout=5))["status"] == "completed"


async def test_storage_full_on_an_event_reaches_the_sender_and_the_run_still_waits(
    engine: Engine, store: FaultyStorage
) -> None:
    await engine.submit("event", {"type": "go"}, run_id="e")
    await reach(engine, "e", "waiting")
    store.fail("record_event", storage.StorageFull("database or disk is full"))
    with pytest.raises(errors.StorageFull):
        await engine.send_event("go", 1)
    assert (await engine.get("e"))["status"] == "waiting"
    assert (await engine.send_event("go", 2))["resolved"] == 1
    assert (await engine.wait("e", timeout=5))["output"] == 2
