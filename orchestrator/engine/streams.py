"""Live fan-out of stream chunks to ``stream --follow`` readers (the durable copy is in storage)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from orchestrator.api import views
from runtime.journal import StreamChunk

# A follower that falls this far behind is dropped back to reading from storage.
FOLLOWER_QUEUE = 1000


class StreamHub:
    def __init__(self) -> None:
        self._followers: dict[tuple[str, str], list[asyncio.Queue[dict[str, Any]]]] = {}

    def publish_for(self, run_id: str) -> Callable[[StreamChunk], None]:
        def publish(chunk: StreamChunk) -> None:
            queues = self._followers.get((run_id, chunk.stream_id))
            if not queues:
                return
            item = views.chunk(chunk)
            for queue in queues:
                if queue.qsize() < FOLLOWER_QUEUE:
                    queue.put_nowait(item)

        return publish

    def follow(self, run_id: str, stream_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._followers.setdefault((run_id, stream_id), []).append(queue)
        return queue

    def unfollow(self, run_id: str, stream_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        queues = self._followers.get((run_id, stream_id), [])
        if queue in queues:
            queues.remove(queue)
        if not queues:
            self._followers.pop((run_id, stream_id), None)
