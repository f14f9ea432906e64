"""Live fan-out of stream chunks to ``stream --follow`` readers (the durable copy is in storage).

The actor driving a run publishes each chunk after its commit; a follower here gets it in
memory. A follower is told to re-read storage instead (``Reread``) when what it should see did
not come through memory: it fell behind (its queue is full), another daemon announced chunks
of the stream (SPEC §13), or the run ended (possibly without a final chunk). Chunks are
numbered (``seq``), so the follower skips what it already has and re-reads on a gap.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any

from orchestrator.api import views
from runtime.journal import StreamChunk
from storage import TERMINAL_STATUSES

# A follower that falls this far behind is dropped back to reading from storage.
FOLLOWER_QUEUE = 1000

_ENDED = frozenset(str(s) for s in TERMINAL_STATUSES)


class Reread(enum.Enum):
    """What a follower must read again from storage."""

    CHUNKS = "chunks"  # the stream's chunks after the last one it has
    RUN = "run"  # the run (has it ended?), then the chunks


class Follower:
    """One ``stream --follow`` reader: live chunks, or a note to re-read (never both piled
    up: while a re-read is due, live chunks are not queued, the re-read will find them)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._due: Reread | None = None

    def offer(self, item: dict[str, Any]) -> None:
        if self._due is not None:
            return  # committed before the re-read starts: it is in storage
        if self._queue.qsize() >= FOLLOWER_QUEUE:
            self.reread(Reread.CHUNKS)
            return
        self._queue.put_nowait(item)

    def reread(self, what: Reread) -> None:
        if self._due is None:
            self._queue.put_nowait(None)
        if self._due is not Reread.RUN:
            self._due = what

    async def next(self, timeout: float | None = None) -> dict[str, Any] | Reread:
        """The next live chunk, or what to re-read (``Reread.RUN`` after ``timeout``)."""
        if not self._queue.empty() or timeout is None:
            item = await self._queue.get()
        else:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return Reread.RUN
        if item is not None:
            return item
        due, self._due = self._due, None
        return due or Reread.CHUNKS


class StreamHub:
    def __init__(self) -> None:
        self._followers: dict[str, dict[str, list[Follower]]] = {}  # run → stream → followers
        # Synchronous observers of every chunk published here (in a cluster, the announcer).
        self.observers: list[Callable[[str, str], None]] = []

    def publish_for(self, run_id: str) -> Callable[[StreamChunk], None]:
        def publish(chunk: StreamChunk) -> None:
            for observe in self.observers:
                observe(run_id, chunk.stream_id)
            followers = self._followers.get(run_id, {}).get(chunk.stream_id)
            if not followers:
                return
            item = views.chunk(chunk)
            for follower in followers:
                follower.offer(item)

        return publish

    def written_elsewhere(self, run_id: str, stream_id: str) -> None:
        """Another daemon committed chunks of the stream: its followers here re-read it."""
        for follower in self._followers.get(run_id, {}).get(stream_id, ()):
            follower.reread(Reread.CHUNKS)

    def run_changed(self, run_id: str, status: str) -> None:
        """A status change of the run (here or announced): once it ended, its followers
        re-read it and stop after its last chunk, final or not."""
        if status in _ENDED:
            self._reread_run(run_id)

    def missed(self) -> None:
        """Announcements may have been lost: every follower re-reads its run."""
        for run_id in list(self._followers):
            self._reread_run(run_id)

    def _reread_run(self, run_id: str) -> None:
        for followers in self._followers.get(run_id, {}).values():
            for follower in followers:
                follower.reread(Reread.RUN)

    def follow(self, run_id: str, stream_id: str) -> Follower:
        follower = Follower()
        self._followers.setdefault(run_id, {}).setdefault(stream_id, []).append(follower)
        return follower

    def unfollow(self, run_id: str, stream_id: str, follower: Follower) -> None:
        streams = self._followers.get(run_id, {})
        followers = streams.get(stream_id, [])
        if follower in followers:
            followers.remove(follower)
        if not followers:
            streams.pop(stream_id, None)
        if not streams:
            self._followers.pop(run_id, None)

    @property
    def followers(self) -> int:
        return sum(len(f) for streams in self._followers.values() for f in streams.values())
