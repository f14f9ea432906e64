"""Disk full (issue 10 item 4, CI variant): SQLite ``max_page_count`` on the embedded engine.

A write that cannot get a new page fails with ``STORAGE_FULL`` and leaves nothing behind; reads
keep working; runs whose step commit hit the full disk are retried once space returns and
complete; nothing acknowledged is lost (SPEC §4 "Disk full", §10).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import storage
from orchestrator import Orchestrator
from orchestrator.api import errors
from tests.reliability.conftest import TERMINAL, embedded_config, wait_until

BIG = 10_000  # bytes: more than a page, so every such write needs new (overflow) pages
HEADROOM = 12  # pages left free above the current size when "the disk fills" (a big run also
# writes full-text index pages, so 4 pages no longer hold one)
ROOM = 1_000_000  # pages: "space returns"


def blob(tag: str, size: int = BIG) -> str:
    return tag + "x" * (size - len(tag))


async def status(orch: Orchestrator, run_id: str) -> str:
    return str((await orch.get(run_id))["status"])


async def wait_status(orch: Orchestrator, run_id: str, *wanted: str, timeout: float = 10) -> Any:
    async def check() -> Any:
        run = await orch.get(run_id)
        return run if run["status"] in wanted else None

    return await wait_until(check, timeout=timeout, what=f"{run_id} in {wanted}")


async def set_cap(orch: Orchestrator, pages: int) -> int:
    """``max_page_count = pages``; returns the cap in force. The pragma goes through the group
    commit, so it fails with the rest of its batch when another caller's op hit the full disk:
    then try again."""
    for _ in range(50):
        try:
            return await orch.storage.set_max_page_count(pages)
        except storage.StorageFull:
            await asyncio.sleep(0.01)
    pytest.fail("could not change max_page_count in 50 tries")


async def fill_disk(orch: Orchestrator, prefix: str = "fill") -> tuple[list[str], list[str]]:
    """Cap the database a few pages above its size, then submit runs until one is refused,
    first big ones, then smaller ones to use up the last partly free pages. Returns the
    acknowledged run ids and the refused ones. Called again, it uses up whatever free space
    other writers left (the cap never goes below the current size)."""
    current = await set_cap(orch, 1)  # the cap cannot go below the size: this returns the size
    assert await set_cap(orch, current + HEADROOM) == current + HEADROOM
    acked: list[str] = []
    refused: list[str] = []
    for size in (BIG, 2_000, 300):
        for i in range(200):
            run_id = f"{prefix}-{size}-{i}"
            try:
                await orch.submit("rel-echo", blob(run_id, size), run_id=run_id)
            except errors.StorageFull as exc:
                assert exc.code == "STORAGE_FULL"
                refused.append(run_id)
                break
            acked.append(run_id)
        else:
            pytest.fail("200 submissions never hit the page limit")
    return acked, refused


async def test_full_disk_refuses_writes_whole_keeps_reads_and_resumes(tmp_path: Path) -> None:
    async with Orchestrator(embedded_config(tmp_path), import_modules=False) as orch:
        done = await orch.submit("rel-echo", {"before": True}, run_id="done")
        ev = (await orch.submit("rel-event", {"type": "go"}, run_id="ev"))["run_id"]
        sig = (await orch.submit("rel-signal", {}, run_id="sig"))["run_id"]
        tok = (await orch.submit("rel-token", {}, run_id="tok"))["run_id"]
        fillers = [
            (await orch.submit("rel-fill", {"type": "fill-go", "steps": 4, "size": BIG},
                               run_id=f"filler-{i}"))["run_id"]
            for i in range(3)
        ]
        for run_id in (ev, sig, tok, *fillers):
            await wait_status(orch, run_id, "waiting")
        await wait_status(orch, done["run_id"], "completed")
        token = (await orch.get(tok))["metadata"]["token"]
        before = await orch.stats()

        acked, refused_ids = await fill_disk(orch)
        failed_batches = orch.storage.stats().failed_batches
        assert failed_batches >= 3

        # Every other kind of client write is refused whole with STORAGE_FULL (the disk is
        # filled up again right before each, so no space freed meanwhile can serve it).
        for n, write in enumerate((
            lambda: orch.send_event("go", blob("event"), event_id="evt-full"),
            lambda: orch.signal(sig, "go", blob("signal")),
            lambda: orch.complete_token(token, blob("token")),
        )):
            more, also_refused = await fill_disk(orch, prefix=f"refill{n}")
            acked += more
            refused_ids += also_refused
            with pytest.raises(errors.StorageFull) as err:
                await write()
            assert err.value.code == "STORAGE_FULL"
        # The refused batches left nothing behind.
        for run_id in refused_ids:
            with pytest.raises(errors.NotFound):
                await orch.get(run_id)
        # A small event still fits in the free space of existing pages: the fillers wake up
        # and their big step results hit the full disk.
        assert (await orch.send_event("fill-go", 1))["resolved"] == len(fillers)

        # Reads keep working, and show none of the refused writes.
        stats = await orch.stats()
        assert stats["events"] == before["events"] + 1  # only fill-go
        assert stats["inbox_signals"] == before["inbox_signals"]
        for run_id in (ev, sig, tok):
            assert await status(orch, run_id) == "waiting"
        assert (await orch.get(done["run_id"]))["output"] == {"echo": {"before": True}}
        listed = {r["run_id"] for r in (await orch.list(limit=1000))["runs"]}
        assert set(acked) <= listed and not set(refused_ids) & listed

        # Step commits are failing: no run gets past a big step while the disk is full.
        await wait_until(lambda: orch.storage.stats().failed_batches > failed_batches + 1,
                         what="step commits hitting the full disk")
        await asyncio.sleep(1.2)  # at least one retry round of the actors (1 s) while full
        big = [r for r in acked if f"-{BIG}-" in r]
        assert big
        for run_id in (*big, *fillers):
            assert await status(orch, run_id) not in TERMINAL, run_id

        # Space returns: the refused writes now succeed and every run completes.
        assert await set_cap(orch, ROOM) == ROOM
        freed = time.monotonic()
        refused = refused_ids[0]
        assert (await orch.submit("rel-echo", blob(refused), run_id=refused))["run_id"] == refused
        assert (await orch.send_event("go", blob("event"), event_id="evt-full"))["resolved"] == 1
        assert (await orch.signal(sig, "go", blob("signal")))["delivered"] is True
        assert (await orch.complete_token(token, blob("token")))["run_id"] == tok

        for run_id in (*acked, refused):
            run = await wait_status(orch, run_id, *TERMINAL, timeout=10)
            assert run["status"] == "completed", run
            assert run["output"]["echo"].startswith(run_id)
        for run_id in fillers:
            run = await wait_status(orch, run_id, *TERMINAL, timeout=10)
            assert run["status"] == "completed", run
            assert run["output"] == {"sizes": [BIG] * 4}
            assert [s["step_id"] for s in run["steps"]] == [f"big-{i}" for i in range(4)]
        # SPEC §4: writes resume within 5 s of space returning (generous slack for CI).
        assert time.monotonic() - freed < 5 + 3
        for run_id, payload in ((ev, blob("event")), (sig, blob("signal")), (tok, blob("token"))):
            run = await wait_status(orch, run_id, *TERMINAL)
            assert run["status"] == "completed"
            assert run["output"] == {"payload": payload}
        assert (await orch.get(done["run_id"]))["status"] == "completed"
        final = await orch.stats()
        assert final["runs"] == {"completed": 5 + len(fillers) + len(acked)}


async def test_fill_and_free_cycles_lose_nothing_acknowledged(tmp_path: Path) -> None:
    """Several fill/free cycles in a row: every acknowledged submission completes, every
    refused one is absent, and the engine never stops accepting writes."""
    async with Orchestrator(embedded_config(tmp_path), import_modules=False) as orch:
        acked_all: list[str] = []
        for cycle in range(3):
            current = await set_cap(orch, 1)
            await set_cap(orch, current + HEADROOM)
            refused = None
            for i in range(200):
                run_id = f"c{cycle}-{i}"
                try:
                    await orch.submit("rel-echo", blob(run_id), run_id=run_id)
                except errors.StorageFull:
                    refused = run_id
                    break
                acked_all.append(run_id)
            assert refused is not None
            with pytest.raises(errors.NotFound):
                await orch.get(refused)
            await set_cap(orch, ROOM)
            for run_id in acked_all:
                run = await wait_status(orch, run_id, *TERMINAL, timeout=10)
                assert run["status"] == "completed"
                assert run["output"] == {"echo": blob(run_id)}
        assert (await orch.stats())["runs"] == {"completed": len(acked_all)}


# Regression (fixed): orchestrator/scheduler.py Scheduler._run has no error handling: a
# STORAGE_FULL from claim_due_timers (its own pages, or any other caller's op failing the shared
# group-commit batch) ends the scheduler task for good, so no timer ever fires again until a
# restart


async def test_timer_firing_that_hits_storage_full_once_is_retried(tmp_path: Path) -> None:
    """A timer whose firing transaction fails with STORAGE_FULL fires once space returns.

    The fault is injected at the storage boundary (``claim_due_timers`` raises
    ``storage.StorageFull`` once for a due timer): with a real ``max_page_count`` the claim
    fails only when it needs a new page or shares its group-commit batch with an op that does,
    which happens in most but not all runs (30 sleepers + a full disk: 4 of 4 standalone), too
    flaky for a strict test."""
    async with Orchestrator(embedded_config(tmp_path), import_modules=False) as orch:
        real_claim = orch.storage.claim_due_timers
        failures = 0

        async def claim(before: float, limit: int = 1000) -> list[Any]:
            nonlocal failures
            due = await orch.storage.next_timer_due()
            if failures == 0 and due is not None and due <= before:
                failures += 1
                raise storage.StorageFull("injected: database or disk is full")
            return await real_claim(before, limit)

        orch.storage.claim_due_timers = claim  # type: ignore[method-assign]
        run = await orch.submit("rel-sleep-stamp", {"seconds": 0.2}, run_id="sleeper")
        await wait_until(lambda: failures == 1, what="the timer's firing to hit the full disk")
        done = await wait_status(orch, run["run_id"], *TERMINAL, timeout=4)
        assert done["status"] == "completed"
