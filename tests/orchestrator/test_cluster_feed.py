"""What a daemon in a cluster does with other daemons' status changes (SPEC §13): its change
feed carries them to followers but not to its observers (the metrics, and the announcer that
would send them back out), and a lost connection gives followers a ``gap`` notice; the pause
bookkeeping says when memory is ahead of storage."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.engine.changes import ChangeFeed
from orchestrator.engine.holds import Holds
from runtime.clock import ManualClock


async def _next(stream: Any) -> dict[str, Any]:
    return dict(await asyncio.wait_for(anext(stream), 1))


async def test_relayed_changes_reach_followers_but_not_observers() -> None:
    feed = ChangeFeed(ManualClock(1000.0))
    observed: list[tuple[str, str, str | None]] = []
    feed.observers.append(lambda *change: observed.append(change))
    stream = feed.follow()
    first = asyncio.ensure_future(_next(stream))
    while not feed.followers:  # the follower is registered
        await asyncio.sleep(0)
    feed.publish("ours", "running", "wf")
    feed.relay("theirs", "completed", "wf")
    feed.missed()
    assert (await first)["run_id"] == "ours"
    relayed = await _next(stream)
    assert (relayed["run_id"], relayed["status"]) == ("theirs", "completed")
    gap = await _next(stream)
    assert gap == {"type": "gap", "since": relayed["seq"], "oldest": relayed["seq"] + 1}
    assert observed == [("ours", "running", "wf")]
    replay = feed.follow(since=relayed["seq"] - 2)
    assert [(await _next(replay))["run_id"] for _ in range(2)] == ["ours", "theirs"]
    await stream.aclose()
    await replay.aclose()


def test_a_pause_being_committed_is_marked_until_done_also_when_nested() -> None:
    holds = Holds()
    with holds.changing("r"):
        holds.pause("r")
        with holds.changing("r"):
            assert holds.is_changing("r")
        assert holds.is_changing("r")
    assert not holds.is_changing("r") and holds.runs() == ["r"]
