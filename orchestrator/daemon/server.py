"""The Unix socket server: NDJSON requests in, replies/events out, dispatched to a Service.

Per connection: the peer uid is checked (SO_PEERCRED), then lines are read with a length limit.
Each request runs in its own task, so several may be in flight at once (replies carry the id).
Everything written to the peer goes through one bounded outbound queue drained by a writer task:
replies and lossless stream events wait for room (backpressure), lossy ``tail`` events are dropped
when it is full and replaced by a ``{"type": "lagged", "dropped": N}`` notice once there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import structlog

from orchestrator.api import caller, errors, protocol, service
from storage.instruments import NO_INSTRUMENT, Instrument

__all__ = ["ServerStats", "SocketInUse", "SocketServer", "peer_uid"]

_SUN_PATH_MAX: Final = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
_CLOSE: Final = None  # sentinel in the outbound queue


# A lingering close after REQUEST_TOO_LARGE (as HTTP servers do): closing a Unix socket whose
# receive queue still holds the rest of the line makes Linux reset the peer (ECONNRESET or
# EPIPE), and the client may lose the reply before reading it. So the rest is read and thrown
# away while it keeps coming, within bounds a hostile peer cannot stretch.
LINGER_QUIET: Final = 0.2  # seconds without data: the peer has stopped sending
LINGER_MAX: Final = 2.0  # seconds in all
LINGER_BYTES: Final = 64 * 1024 * 1024


async def _linger(reader: asyncio.StreamReader) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + LINGER_MAX
    left = LINGER_BYTES
    with contextlib.suppress(TimeoutError, OSError, ValueError, asyncio.LimitOverrunError):
        while left > 0 and (remaining := until - loop.time()) > 0:
            chunk = await asyncio.wait_for(reader.read(65536), min(LINGER_QUIET, remaining))
            if not chunk:
                return
            left -= len(chunk)


class SocketInUse(RuntimeError):
    """A live server already answers on the socket path (another daemon is running)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"socket {path} is in use by a live process (is another wf daemon running?)"
        )
        self.path = path


class SocketPathError(RuntimeError):
    """The socket path cannot be used (too long, or not a socket file)."""


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


@dataclass(frozen=True, slots=True)
class ServerStats:
    connections_open: int
    connections_total: int
    connections_refused: int
    requests_served: int
    requests_in_flight: int
    errors_by_code: Mapping[str, int] = field(default_factory=dict)
    events_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "requests_served": self.requests_served,
            "requests_in_flight": self.requests_in_flight,
            "errors_by_code": dict(self.errors_by_code),
            "events_dropped": self.events_dropped,
        }


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter, queue_size: int) -> None:
        self.writer = writer
        self.out: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=queue_size)
        self.requests: dict[protocol.RequestId, asyncio.Task[None]] = {}
        self.handler: asyncio.Task[None] | None = None

    async def send(self, line: bytes) -> None:
        await self.out.put(line)

    def try_send(self, line: bytes) -> bool:
        try:
            self.out.put_nowait(line)
        except asyncio.QueueFull:
            return False
        return True


class SocketServer:
    """Serve ``service`` on the Unix socket at ``path``.

    ``allowed_uids`` are accepted besides the daemon's own uid and root. ``peer_uid_of`` is the
    SO_PEERCRED lookup, replaceable in tests. ``stream_queue_size`` bounds each connection's
    outbound queue (lines).
    """

    def __init__(
        self,
        service: service.Service,
        path: Path | str,
        *,
        allowed_uids: Iterable[int] = (),
        max_request_bytes: int = protocol.DEFAULT_MAX_REQUEST_BYTES,
        logger: Any = None,
        stream_queue_size: int = 256,
        backlog: int = 2048,
        max_connections: int | None = None,
        peer_uid_of: Callable[[socket.socket], int] = peer_uid,
        instrument: Instrument = NO_INSTRUMENT,
    ) -> None:
        self._service = service
        self._instrument = instrument
        self.path = Path(path)
        self._allowed = frozenset({os.getuid(), 0, *allowed_uids})
        self._max_request_bytes = max_request_bytes
        self._log: Any = logger if logger is not None else structlog.get_logger("wf.server")
        self._queue_size = stream_queue_size
        # A full listen queue makes connect() on a Unix socket fail with EAGAIN, which asyncio
        # reports as a half-open connection: keep it deep enough for a burst of clients.
        self._backlog = backlog
        # Past this many open connections new ones are closed at once, so the daemon never
        # runs out of file descriptors (which wedges asyncio's accept loop).
        self._max_connections = max_connections
        self._peer_uid_of = peer_uid_of
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._connections: set[_Connection] = set()
        self._connections_total = 0
        self._connections_refused = 0
        self._requests_served = 0
        self._errors: Counter[str] = Counter()
        self._events_dropped = 0

    # --- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen. Replaces a stale socket file; raises :class:`SocketInUse` if a live
        server answers on it, :class:`SocketPathError` if the path cannot be a socket."""
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise SocketPathError(
                f"socket path {self.path} is longer than {_SUN_PATH_MAX} bytes; use a shorter one"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._remove_stale_socket()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connect,
                path=str(self.path),
                limit=self._max_request_bytes,
                backlog=self._backlog,
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        self._log.info("socket.listening", path=str(self.path))

    async def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketPathError(f"{self.path} exists and is not a socket; refusing to replace it")
        try:
            _reader, writer = await asyncio.open_unix_connection(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            self._log.info("socket.stale_removed", path=str(self.path))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise SocketInUse(self.path)

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections keep being served until :meth:`close`
        (the daemon's shutdown: no new clients while in-flight work finishes)."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Stop accepting, cancel in-flight requests, close every connection, remove the file."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        handlers = [c.handler for c in self._connections if c.handler is not None]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._log.info("socket.closed", path=str(self.path))

    def stats(self) -> ServerStats:
        return ServerStats(
            connections_open=len(self._connections),
            connections_total=self._connections_total,
            connections_refused=self._connections_refused,
            requests_served=self._requests_served,
            requests_in_flight=sum(len(c.requests) for c in self._connections),
            errors_by_code=MappingProxyType(dict(self._errors)),
            events_dropped=self._events_dropped,
        )

    # --- connections ----------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's done callback for this task calls task.exception(), which raises on a
        # cancelled task: a cancellation (close(), or a peer that stopped reading) ends here.
        try:
            await self._handle(reader, writer)
        except asyncio.CancelledError:
            self._log.debug("socket.connection_cancelled")
        except Exception as exc:
            self._log.error("socket.connection_failed", exc_info=exc)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._max_connections is not None and len(self._connections) >= self._max_connections:
            self._connections_refused += 1
            if self._connections_refused % 100 == 1:  # a storm must not become a log storm
                self._log.warning("socket.too_many_connections", limit=self._max_connections,
                                  refused=self._connections_refused)
            writer.transport.abort()
            return
        conn = _Connection(writer, self._queue_size)
        handler = asyncio.current_task()
        conn.handler = handler
        self._connections.add(conn)
        self._connections_total += 1
        writer_task: asyncio.Task[None] | None = None
        try:
            uid = self._peer_uid_of(writer.get_extra_info("socket"))
            if uid not in self._allowed:
                self._connections_refused += 1
                self._count_error(errors.ErrorCode.PERMISSION_DENIED)
                self._log.warning("socket.peer_refused", uid=uid)
                writer.write(protocol.error_line(None, errors.PermissionDenied(uid)))
                await writer.drain()
                return
            caller.PEER_UID.set(uid)  # the connection's request tasks inherit it (audit)
            writer_task = asyncio.create_task(self._write_loop(conn), name="socket:writer")

            def writer_done(task: asyncio.Task[None]) -> None:
                # The peer stopped accepting data: nothing more can be delivered on it.
                if not task.cancelled() and task.exception() is not None and handler is not None:
                    handler.cancel()

            writer_task.add_done_callback(writer_done)
            await self._read_loop(conn, reader)
            # EOF: let the requests already in flight finish and reply, then close.
            if conn.requests:
                await asyncio.gather(*conn.requests.values(), return_exceptions=True)
        except ConnectionError:
            self._log.debug("socket.peer_gone")
        finally:
            self._connections.discard(conn)
            try:
                await self._finish(conn, writer_task)
            finally:
                if self._server is None:  # closing the server: do not wait for a slow peer
                    writer.transport.abort()
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _finish(self, conn: _Connection, writer_task: asyncio.Task[None] | None) -> None:
        """Cancel the connection's requests, then let the writer flush what is queued (unless
        the server is closing or the queue is full)."""
        tasks = list(conn.requests.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if writer_task is None:
            return
        if not writer_task.done():
            if self._server is None:
                writer_task.cancel()
            else:
                try:
                    conn.out.put_nowait(_CLOSE)
                except asyncio.QueueFull:
                    writer_task.cancel()
            try:
                await asyncio.wait([writer_task])
            except asyncio.CancelledError:
                writer_task.cancel()
                raise
        if not writer_task.cancelled():
            writer_task.exception()  # retrieved: a failed write only means the peer went away

    async def _write_loop(self, conn: _Connection) -> None:
        writer = conn.writer
        while True:
            line = await conn.out.get()
            # A peer that vanished gets no more replies: writing to a closing transport only
            # makes asyncio print "socket.send() raised exception." once per write.
            if line is _CLOSE or writer.transport.is_closing():
                return
            writer.write(line)
            while not conn.out.empty():  # batch whatever else is ready into one drain
                line = conn.out.get_nowait()
                if line is _CLOSE:
                    await writer.drain()
                    return
                writer.write(line)
            await writer.drain()
            self._instrument.reached("reply.sent")

    async def _read_loop(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                # The line is longer than the limit: answer, and close without reading the rest.
                err = errors.RequestTooLarge(self._max_request_bytes)
                self._count_error(err.code)
                self._log.warning("socket.request_too_large", limit=self._max_request_bytes)
                for task in list(conn.requests.values()):
                    task.cancel()
                await conn.send(protocol.error_line(None, err))
                await _linger(reader)
                return
            if not line:
                return
            if not line.strip():
                continue
            self._dispatch(conn, line)

    def _dispatch(self, conn: _Connection, line: bytes) -> None:
        try:
            request = protocol.parse_request(line)
        except protocol.BadRequest as bad:
            self._count_error(bad.error.code)
            self._spawn(conn, bad.id, self._reply_error(conn, bad.id, bad.error))
            return
        if request.method == protocol.CANCEL_METHOD:
            self._spawn(conn, request.id, self._cancel_request(conn, request))
            return
        self._spawn(conn, request.id, self._serve(conn, request))

    def _spawn(self, conn: _Connection, req_id: protocol.RequestId, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"socket:request:{req_id}")
        key: Any = (req_id, id(task)) if req_id in conn.requests else req_id
        conn.requests[key] = task
        task.add_done_callback(lambda _t: conn.requests.pop(key, None))

    async def _reply_error(
        self, conn: _Connection, req_id: protocol.RequestId, err: errors.ServiceError
    ) -> None:
        await conn.send(protocol.error_line(req_id, err))

    async def _cancel_request(self, conn: _Connection, request: protocol.Request) -> None:
        target = request.params.get("id")
        task = conn.requests.get(target) if isinstance(target, int | str) else None
        if task is not None and not task.done():
            task.cancel()
        await conn.send(protocol.reply_line(request.id, {"cancelled": task is not None}))

    # --- requests -------------------------------------------------------------------------

    async def _serve(self, conn: _Connection, request: protocol.Request) -> None:
        req_id = request.id
        try:
            spec = protocol.METHODS.get(request.method)
            if spec is None:
                raise errors.MethodNotFound(request.method)
            call = protocol.parse_params(spec, request.params)
            if isinstance(call, service.StreamRequest):
                await self._serve_stream(conn, req_id, spec, self._service.open_stream(call))
            else:
                result = await self._service.dispatch(call)
                line = protocol.reply_line(req_id, result)
                await conn.send(line)
            self._requests_served += 1
        except errors.ServiceError as err:
            self._count_error(err.code)
            await conn.send(protocol.error_line(req_id, err))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._count_error(errors.ErrorCode.INTERNAL)
            self._log.error(
                "socket.internal_error", method=request.method, request_id=req_id, exc_info=exc
            )
            detail = f"{type(exc).__name__}: {exc}"
            await conn.send(protocol.error_line(req_id, errors.InternalError(detail)))

    async def _serve_stream(
        self, conn: _Connection, req_id: protocol.RequestId, spec: protocol.MethodSpec, it: Any
    ) -> None:
        sent = dropped = pending_notice = 0
        try:
            async for item in it:
                if not spec.lossy:
                    await conn.send(protocol.event_line(req_id, item))
                    sent += 1
                    continue
                if pending_notice:
                    notice = {"type": "lagged", "dropped": pending_notice}
                    if not conn.try_send(protocol.event_line(req_id, notice)):
                        pending_notice += 1
                        dropped += 1
                        self._events_dropped += 1
                        continue
                    pending_notice = 0
                if conn.try_send(protocol.event_line(req_id, item, lenient=True)):
                    sent += 1
                else:
                    pending_notice += 1
                    dropped += 1
                    self._events_dropped += 1
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
        if pending_notice:
            await conn.send(
                protocol.event_line(req_id, {"type": "lagged", "dropped": pending_notice})
            )
        await conn.send(protocol.reply_line(req_id, {"events": sent, "dropped": dropped}))

    def _count_error(self, code: str) -> None:
        self._errors[str(code)] += 1
