"""The slot queue: resuming runs first, then by priority, then by arrival."""

from __future__ import annotations

from orchestrator.engine.slots import SlotQueue, rank


def test_free_slots_are_taken_until_none_is_left() -> None:
    slots = SlotQueue(2)
    assert slots.take() and slots.take()
    assert not slots.take()
    assert slots.hand_over() is None  # nobody queued: the slot is free again
    assert slots.free == 1


def test_queued_runs_get_released_slots_by_rank_then_arrival() -> None:
    slots = SlotQueue(1)
    assert slots.take()
    slots.queue(rank(resuming=False, priority=0), "start-low")
    slots.queue(rank(resuming=False, priority=5), "start-high")
    slots.queue(rank(resuming=True), "resume-a")
    slots.queue(rank(resuming=False, priority=0), "start-low-2")
    slots.queue(rank(resuming=True), "resume-b")
    assert not slots.take()  # a free slot would not jump the queue either
    order = [slots.hand_over() for _ in range(5)]
    assert order == ["resume-a", "resume-b", "start-high", "start-low", "start-low-2"]
    assert slots.hand_over() is None
    assert slots.free == 1 and slots.waiting == 0
