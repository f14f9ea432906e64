"""uvicorn embedded on the daemon's event loop, leaving the daemon its signals.

``uvicorn.Server.serve`` swaps SIGINT/SIGTERM handlers while it runs and re-raises the caught
signal at exit (``capture_signals``); the daemon owns those signals and orders its own stop, so
that method is a no-op here. The socket is bound before ``start`` returns, so a port in use is
a start-up error, not a log line later.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any

import uvicorn
from starlette.types import ASGIApp


class _NoSignalServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


Background = Callable[[], Coroutine[Any, Any, None]]


class HttpServer:
    def __init__(self, app: ASGIApp, host: str, port: int,
                 background: Sequence[Background] = ()) -> None:
        """``background``: tasks that live as long as the server (the health page's sampler)."""
        self.host = host
        self.port = port
        self._background = tuple(background)
        self._tasks: list[asyncio.Task[None]] = []
        config = uvicorn.Config(app, loop="none", lifespan="off", log_config=None,
                                access_log=False, server_header=False, http="h11",
                                timeout_graceful_shutdown=1)
        self._server = _NoSignalServer(config)
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        """Bind (``OSError`` if the address is taken) and serve in a task of this loop."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]  # port 0 picks a free one (tests)
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name="http:server")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()  # raise why it stopped
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(job(), name=f"http:{getattr(job, '__qualname__', 'job')}")
                       for job in self._background]

    async def close(self) -> None:
        """Stop accepting, end open streams, wait for the server task."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks = []
        if self._task is None:
            return
        self._server.should_exit = True
        self._server.force_exit = True  # open SSE streams never end by themselves
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._task, 5)
        # force_exit leaves the responses still running (an SSE stream never ends by itself):
        # cancel them here, so their streams close before the engine does.
        left = [t for t in self._server.server_state.tasks if not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=5)
        if self._sock is not None:
            self._sock.close()
        self._task = None
