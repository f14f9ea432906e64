"""``stream --follow`` on one daemon: it ends at the final chunk, and also when the run ends
without one (its source failed); a follower that falls behind catches up from storage with
nothing lost or repeated. The hub's follower bookkeeping on its own below."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.api import service
from orchestrator.engine.engine import Engine
from orchestrator.engine.streams import FOLLOWER_QUEUE, Follower, Reread, StreamHub
from runtime.journal import StreamChunk
from tests.orchestrator import engine_workflows


async def _follow(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    request = service.Stream(run_id=run_id, stream_id="s", follow=True)
    return [chunk async for chunk in engine.open_stream(request)]


async def test_follow_ends_at_the_final_chunk(engine: Engine) -> None:
    await engine.submit("stream", None, run_id="st")
    chunks = await asyncio.wait_for(_follow(engine, "st"), 5)
    assert [(c["seq"], c["chunk"], c["final"]) for c in chunks] == [
        (0, "hel", False), (1, "lo", False), (2, None, True)]


async def test_follow_ends_when_the_run_ends_without_a_final_chunk(engine: Engine) -> None:
    await engine.submit("stream-broken", None, run_id="br")
    gate = engine_workflows.gate("br")
    await asyncio.wait_for(gate.started.wait(), 5)
    follow = asyncio.ensure_future(_follow(engine, "br"))
    await asyncio.sleep(0.05)
    assert not follow.done()  # the run goes on: so does the follow
    gate.release.set()
    chunks = await asyncio.wait_for(follow, 5)  # hung here before: no final chunk came
    assert [(c["seq"], c["chunk"], c["final"]) for c in chunks] == [(0, "par", False)]
    done = await engine.wait("br")
    assert done["status"] == "completed" and done["output"].startswith("broken"), done
    # Following a run that already ended that way returns what was recorded, at once.
    again = await asyncio.wait_for(_follow(engine, "br"), 1)
    assert [c["chunk"] for c in again] == ["par"]


def _chunk(seq: int, final: bool = False) -> StreamChunk:
    return StreamChunk("s", seq, "text", None if final else f"c{seq}", final, 1.0)


async def test_a_follower_behind_is_told_to_reread_instead_of_losing_chunks() -> None:
    hub = StreamHub()
    seen: list[tuple[str, str]] = []
    hub.observers.append(lambda run_id, stream_id: seen.append((run_id, stream_id)))
    follower = hub.follow("r", "s")
    other = hub.follow("r", "t")
    publish = hub.publish_for("r")
    for seq in range(FOLLOWER_QUEUE + 5):
        publish(_chunk(seq))
    assert len(seen) == FOLLOWER_QUEUE + 5
    got = [await follower.next(0) for _ in range(FOLLOWER_QUEUE)]
    assert [item["seq"] for item in got if isinstance(item, dict)] == list(range(FOLLOWER_QUEUE))
    assert await follower.next(0) is Reread.CHUNKS  # once, for all it did not queue
    assert await follower.next(0) is Reread.RUN  # nothing queued: a timeout says "look"
    publish(_chunk(FOLLOWER_QUEUE + 5))  # queued again after the re-read was taken
    assert isinstance(await follower.next(0), dict)
    # The other stream's follower saw nothing; a re-read asked twice comes once, the run's
    # end outranks new chunks, and a status short of the end asks nothing.
    hub.written_elsewhere("r", "t")
    hub.written_elsewhere("r", "t")
    hub.run_changed("r", "waiting")
    hub.run_changed("r", "failed")
    assert await other.next(0) is Reread.RUN
    assert other._queue.empty()
    hub.unfollow("r", "s", follower)
    hub.unfollow("r", "t", other)
    assert hub.followers == 0


async def test_a_follower_rereads_the_run_on_a_lost_connection() -> None:
    hub = StreamHub()
    follower: Follower = hub.follow("r", "s")
    hub.missed()
    assert await follower.next(0) is Reread.RUN
