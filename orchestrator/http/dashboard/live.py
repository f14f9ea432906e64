"""Live pages: one server-sent-event stream per open page, fed by the engine's change feed
(the ``changes`` method; nothing polls). The stream only says "refresh": htmx then re-reads the
fragment it shows (the runs table, the run's body) with the page's own filters.

A burst of changes becomes one refresh at most every ``interval`` seconds, so a busy engine
costs an open page a few small reads a second, not one per change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from orchestrator.api import service as api

INTERVAL: Final = 0.3
HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

Match = Callable[[dict[str, Any]], bool]


async def refreshes(service: api.Service, event: str, match: Match,
                    interval: float = INTERVAL) -> AsyncIterator[bytes]:
    """``event: <event>`` each time a matching change (or a gap/lag notice: something may have
    been missed) arrived since the last one, at most once per ``interval``."""
    dirty = asyncio.Event()

    async def pump() -> None:
        changes = service.open_stream(api.Changes())
        async with contextlib.aclosing(changes):  # type: ignore[type-var]
            async for change in changes:
                if change.get("type") in ("gap", "lagged") or match(change):
                    dirty.set()

    task = asyncio.create_task(pump(), name="http:dashboard-live")
    try:
        yield b": live\n\n"  # headers out at once; htmx connects
        while not task.done():
            waiter = asyncio.ensure_future(dirty.wait())
            await asyncio.wait((waiter, task), return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if dirty.is_set():
                dirty.clear()
                yield f"event: {event}\ndata: refresh\n\n".encode()
                await asyncio.sleep(interval)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Live:
    def __init__(self, service: api.Service, interval: float = INTERVAL) -> None:
        self.service = service
        self.interval = interval

    def stream(self, event: str, match: Match) -> Response:
        return StreamingResponse(refreshes(self.service, event, match, self.interval),
                                 media_type="text/event-stream", headers=HEADERS)

    async def runs(self, request: Request) -> Response:
        workflow = request.query_params.get("workflow_id")

        def match(change: dict[str, Any]) -> bool:
            return not workflow or change.get("workflow_id") == workflow

        return self.stream("runs", match)

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        return self.stream("run", lambda change: change.get("run_id") == run_id)
