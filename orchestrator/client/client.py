"""The async client of the daemon's Unix socket (SPEC §6).

```python
async with Client.connect("./wf.sock") as c:
    run = await c.submit("send-reminder", {"booking_id": 1})
    done = await c.wait(run["run_id"])
    async for chunk in c.stream(run["run_id"], "tokens", follow=True):
        ...
```

One connection carries any number of concurrent calls: a reader task demultiplexes the replies by
request id. An error reply raises :class:`RemoteError`; the raised object is also an instance of
the matching :mod:`orchestrator.errors` class (``except errors.NotFound`` works). A connection
that cannot be opened, or that is lost, raises :class:`DaemonUnreachable`.

A streaming iterator closed before its end (``break`` inside ``async for``) sends ``$cancel`` so
the daemon stops the stream; close it promptly with ``contextlib.aclosing`` where that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from orchestrator.api import errors, protocol, service

__all__ = ["Client", "DaemonUnreachable", "RemoteError"]

JSONDict = dict[str, Any]
R = TypeVar("R")
_READ_LIMIT: Final = 256 * 1024 * 1024
_STREAM_QUEUE: Final = 256


def current_traceparent() -> str | None:
    """The caller's current OpenTelemetry span as a W3C ``traceparent``, or None. Looks only
    at an OpenTelemetry the application already imported: the client never imports it."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xFF:02x}"


class DaemonUnreachable(ConnectionError):
    """The daemon's socket cannot be reached, or the connection was lost."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(
            f"cannot reach the wf daemon at {path}: {reason} (`wf daemon` may not be running)"
        )
        self.path = Path(path)
        self.reason = reason


class RemoteError(Exception):
    """An error reply from the daemon: ``code``, ``message`` and ``data`` as sent."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self._set(code, message, data)

    def _set(self, code: str, message: str, data: dict[str, Any] | None) -> None:
        self.code = code
        self.message = message
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


_REMOTE_CLASSES: dict[str, type[RemoteError]] = {}


def remote_error(error: Any) -> RemoteError:
    """Rebuild the error object of an error line as a ``RemoteError`` that is also an instance of
    the matching ``orchestrator.errors`` class."""
    if not isinstance(error, dict):
        error = {"code": "INTERNAL", "message": f"malformed error reply: {error!r}"}
    code = str(error.get("code", "INTERNAL"))
    message = str(error.get("message", ""))
    data = error.get("data")
    cls = _REMOTE_CLASSES.get(code)
    if cls is None:
        base = errors.class_for_code(code)
        if base is errors.ServiceError:
            cls = RemoteError
        else:
            name = "Remote" + base.__name__
            cls = cast(type[RemoteError], type(name, (RemoteError, base), {}))
            _REMOTE_CLASSES[code] = cls
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc._set(code, message, data)
    return exc


class _StreamEnd:
    """Queued to a stream when the connection ends or the stream failed."""

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


class Client(service.ServiceMethods):
    """A connection to the daemon. Use ``async with Client.connect(path) as c``; every method
    of SPEC §6 is a coroutine named like the method (streaming ones are async iterators)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: Path
    ) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[protocol.Reply | _StreamEnd]] = {}
        self._lost: BaseException | None = None
        self._read_task = asyncio.create_task(self._read_loop(), name="client:reader")

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, path: Path | str) -> AsyncIterator[Client]:
        """Open a connection for the duration of an ``async with`` block."""
        client = await cls.open(path)
        try:
            yield client
        finally:
            await client.close()

    @classmethod
    async def open(cls, path: Path | str) -> Client:
        """Open a connection; the caller must ``await client.close()``."""
        path = Path(path)
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=_READ_LIMIT)
        except OSError as exc:
            raise DaemonUnreachable(path, exc.strerror or str(exc)) from exc
        return cls(reader, writer, path)

    async def close(self) -> None:
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    # --- plumbing -------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason: BaseException = DaemonUnreachable(self.path, "the daemon closed the connection")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                reply = protocol.parse_reply(line)
                if reply.id is None and reply.kind == "error":
                    # The daemon could not attribute it (e.g. REQUEST_TOO_LARGE,
                    # PERMISSION_DENIED): the connection is about to close; fail everything.
                    reason = remote_error(reply.value)
                    break
                await self._deliver(reply)
        except asyncio.CancelledError:
            reason = DaemonUnreachable(self.path, "the client closed the connection")
            raise
        except (OSError, ValueError, errors.ParseError) as exc:
            reason = DaemonUnreachable(self.path, f"connection lost ({exc})")
        finally:
            self._fail_all(reason)

    async def _deliver(self, reply: protocol.Reply) -> None:
        if not isinstance(reply.id, int):
            return
        fut = self._pending.get(reply.id)
        if fut is not None:
            if fut.done():
                return
            if reply.kind == "result":
                fut.set_result(reply.value)
            elif reply.kind == "error":
                fut.set_exception(remote_error(reply.value))
            return
        queue = self._streams.get(reply.id)
        if queue is not None:
            await queue.put(reply)
        # Anything else answers a request we gave up on ($cancel replies, late results).

    def _fail_all(self, exc: BaseException) -> None:
        self._lost = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        for queue in self._streams.values():
            if queue.full():  # make room: the stream is ending with an error anyway
                queue.get_nowait()
            queue.put_nowait(_StreamEnd(exc))

    async def _send(self, line: bytes) -> None:
        if self._lost is not None:
            raise self._lost
        self._writer.write(line)
        try:
            await self._writer.drain()
        except OSError:
            # The reader task reports why (an error line sent before closing, or the loss).
            return

    def _send_cancel(self, req_id: int) -> None:
        if self._lost is None and not self._writer.is_closing():
            self._writer.write(protocol.request_line(None, protocol.CANCEL_METHOD, {"id": req_id}))

    async def request(self, method: str, params: JSONDict) -> Any:
        """Send one raw request and return its result (:class:`RemoteError` on an error)."""
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            await self._send(protocol.request_line(req_id, method, params))
            return await fut
        except asyncio.CancelledError:
            self._send_cancel(req_id)
            raise
        finally:
            self._pending.pop(req_id, None)

    async def request_stream(self, method: str, params: JSONDict) -> AsyncIterator[JSONDict]:
        """Send a raw streaming request and yield its events until its final result."""
        req_id = next(self._ids)
        queue: asyncio.Queue[protocol.Reply | _StreamEnd] = asyncio.Queue(_STREAM_QUEUE)
        self._streams[req_id] = queue
        finished = False
        try:
            await self._send(protocol.request_line(req_id, method, params))
            while True:
                item = await queue.get()
                if isinstance(item, _StreamEnd):
                    finished = True
                    if item.exc is not None:
                        raise item.exc
                    return
                if item.kind == "event":
                    yield item.value
                elif item.kind == "result":
                    finished = True
                    return
                else:
                    finished = True
                    raise remote_error(item.value)
        finally:
            self._streams.pop(req_id, None)
            if not finished:
                self._send_cancel(req_id)

    # --- the service ----------------------------------------------------------------------

    async def call(self, request: service.Request[R]) -> R:
        """Send a request object; every named method (``submit``, ``get``, ...) comes here."""
        if isinstance(request, service.Submit) and request.traceparent is None:
            traceparent = current_traceparent()
            if traceparent is not None:  # the run's spans join the caller's trace
                request = cast("service.Request[R]",
                               dataclasses.replace(request, traceparent=traceparent))
        result: R = await self.request(request.method, request.params())
        return result

    def open_stream(self, request: service.StreamRequest) -> AsyncIterator[JSONDict]:
        return self.request_stream(request.method, request.params())
