"""The slot queue: resuming runs first, then by priority, then by arrival; cancels lose no slot."""

from __future__ import annotations

import asyncio

from orchestrator.slots import Slots, rank


async def test_waiters_are_served_by_rank_then_arrival() -> None:
    slots = Slots(1)
    await slots.acquire(rank(resuming=False))
    order: list[str] = []

    async def want(name: str, key: tuple[int, int]) -> None:
        await slots.acquire(key)
        order.append(name)
        slots.release()

    tasks = [
        asyncio.create_task(want("start-low", rank(resuming=False, priority=0))),
        asyncio.create_task(want("start-high", rank(resuming=False, priority=5))),
        asyncio.create_task(want("resume-a", rank(resuming=True))),
        asyncio.create_task(want("start-low-2", rank(resuming=False, priority=0))),
        asyncio.create_task(want("resume-b", rank(resuming=True))),
    ]
    await asyncio.sleep(0)
    assert slots.waiting == 5
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["resume-a", "resume-b", "start-high", "start-low", "start-low-2"]
    assert slots.free == 1


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = Slots(1)
    await slots.acquire(rank(resuming=False))
    gone = asyncio.create_task(slots.acquire(rank(resuming=True)))
    stays = asyncio.create_task(slots.acquire(rank(resuming=False)))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    slots.release()  # must skip the cancelled waiter and reach the other one
    await asyncio.wait_for(stays, 1)
    slots.release()
    assert slots.free == 1


async def test_a_waiter_cancelled_after_being_handed_the_slot_passes_it_on() -> None:
    slots = Slots(1)
    await slots.acquire(rank(resuming=False))
    first = asyncio.create_task(slots.acquire(rank(resuming=True)))
    second = asyncio.create_task(slots.acquire(rank(resuming=False)))
    await asyncio.sleep(0)
    slots.release()  # hands the slot to `first`, which has not run yet
    first.cancel()  # ...and is cancelled before it could
    await asyncio.wait_for(second, 1)
    assert first.cancelled()
    slots.release()
    assert slots.free == 1
