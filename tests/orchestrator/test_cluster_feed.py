"""What a daemon in a cluster does with other daemons' status changes (SPEC §13): its change
feed carries them to followers but not to its observers (the metrics, and the announcer that
would send them back out), and a lost connection gives followers a ``gap`` notice; the pause
bookkeeping says when memory is ahead of storage; stream chunks are announced only for streams
another daemon said it follows."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from orchestrator.engine.changes import ChangeFeed
from orchestrator.engine.cluster import ClusterLoop
from orchestrator.engine.holds import Holds
from runtime.clock import ManualClock
from storage import StreamNotice


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


def test_chunks_are_announced_only_for_streams_another_daemon_follows() -> None:
    driven = {"mine"}
    loop = ClusterLoop(cast(Any, None), "A", 1.0, claim_limit=1, take_over=_never,
                       move=_never, timer_due=lambda _due: None, drives=driven.__contains__)
    loop.chunk_written("mine", "out")
    assert list(loop._unsent_chunks) == []  # nobody follows it elsewhere: no notification
    # B follows it (and a stream of a run A does not drive): A re-announces its own at once.
    loop._heard_followed([StreamNotice("mine", "out"), StreamNotice("theirs", "out")])
    assert list(loop._unsent_chunks) == [StreamNotice("mine", "out")]
    loop._unsent_chunks.clear()
    loop.chunk_written("mine", "out")
    loop.chunk_written("mine", "out")
    loop.chunk_written("mine", "other")
    assert list(loop._unsent_chunks) == [StreamNotice("mine", "out")]  # once per batch
    loop._unsent_chunks.clear()
    loop._followed[StreamNotice("mine", "out")] = 0.0  # B stopped renewing: expired
    loop.chunk_written("mine", "out")
    assert list(loop._unsent_chunks) == [] and StreamNotice("mine", "out") not in loop._followed
    loop.follow_elsewhere("theirs", "out")
    assert list(loop._unsent_follows) == [StreamNotice("theirs", "out")]


async def _never(*_args: Any) -> Any:
    raise AssertionError("not called here")
