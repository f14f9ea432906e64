"""structlog configuration and the live fan-out behind ``wf tail``.

:func:`configure_logging` is called once by the daemon at start (never at import time). Its
processor chain is short: level, ISO-8601 UTC ``timestamp``, the fan-out hook, then a renderer
(orjson JSON lines or structlog's console renderer) writing to stdout or ``logging.file``.

The fan-out hook hands every record that passes the level filter to the registered
:class:`LogSubscription`\\ s with a non-blocking put into each one's bounded queue; when nobody is
subscribed it costs one truthiness check. A subscription whose queue is full drops the record and
counts it; its iterator then yields one ``{"type": "lagged", "dropped": N}`` notice after the
records queued before the drop and before the next one that fits. Records logged from worker
threads (sync steps) are handed over with ``call_soon_threadsafe``.

Lines logged on the event-loop thread are written once per loop iteration, all together (one
``write`` instead of one per line). A ``write`` lets go of the GIL, and under load the writer
thread takes it and the loop waits to get it back: three lines per run cost ~30 µs each that
way. Warnings and worse, lines from other threads and lines logged outside a running loop are
written at once, behind anything still buffered; so is everything at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TextIO

import orjson
import structlog

if TYPE_CHECKING:
    from orchestrator.config import LoggingConfig

__all__ = ["LogSubscription", "configure_logging", "fan_out", "subscribe"]

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_subscribers: list[LogSubscription] = []
_log_file: TextIO | None = None
_URGENT: Final = frozenset({"warn", "warning", "err", "error", "critical", "fatal", "exception",
                            "failure"})


class LogSubscription:
    """A bounded queue of log records for one ``tail`` (use :func:`subscribe`).

    Iterate it with ``async for``; it never ends by itself, close it (or leave the ``with``
    block) to unsubscribe. Must be created inside the event loop that iterates it.
    """

    def __init__(self, maxsize: int = 1000) -> None:
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=maxsize)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.dropped = 0  # records dropped since the last lagged notice
        self.dropped_total = 0
        self.closed = False

    def offer(self, record: dict[str, Any]) -> None:
        """Called by the fan-out processor from any thread; never blocks."""
        if threading.get_ident() == self._thread:
            self._put(record)
        else:
            try:
                self._loop.call_soon_threadsafe(self._put, record)
            except RuntimeError:  # loop closed: the subscriber is gone
                self.close()

    def _put(self, record: dict[str, Any]) -> None:
        # Drops happen only while the queue is full, so every queued record is older than them:
        # the notice goes in behind those, ahead of the first record that fits again.
        if self.dropped and not self._queue.full():
            self._queue.put_nowait({"type": "lagged", "dropped": self.dropped})
            self.dropped = 0
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            self.dropped_total += 1

    def close(self) -> None:
        self.closed = True
        if self in _subscribers:
            _subscribers.remove(self)

    def __enter__(self) -> LogSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self.closed:
            raise StopAsyncIteration
        if self.dropped and self._queue.empty():
            notice = {"type": "lagged", "dropped": self.dropped}
            self.dropped = 0
            return notice
        return await self._queue.get()


def subscribe(maxsize: int = 1000) -> LogSubscription:
    """Register a subscription that receives every record logged from now on."""
    sub = LogSubscription(maxsize)
    _subscribers.append(sub)
    return sub


def subscriber_count() -> int:
    return len(_subscribers)


def fan_out(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: hand a copy of the record to every subscriber."""
    if _subscribers:
        record = dict(event_dict)
        for sub in tuple(_subscribers):
            sub.offer(record)
    return event_dict


class _LineSink:
    """Where rendered lines go: buffered on the event-loop thread, written once per iteration."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out  # None: whatever sys.stdout is when writing (test runners swap it)
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._scheduled = False

    def put(self, line: str, urgent: bool) -> None:
        # asyncio's own no-raise lookup (in asyncio.__all__): None outside a running loop.
        loop = None if urgent else asyncio._get_running_loop()
        with self._lock:
            self._pending.append(line)
            if loop is None:
                self._write_pending()
                return
            if self._scheduled:
                return
            self._scheduled = True
        # Runs after the callbacks already ready, before the loop next waits for I/O.
        loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            self._scheduled = False
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        self._pending.append("")  # the last line's newline
        data = "\n".join(self._pending)
        self._pending.clear()
        out = self.out if self.out is not None else sys.stdout
        out.write(data)
        out.flush()


class _LineLogger:
    """structlog's logger: hands each rendered line to the sink (PrintLogger writes each one)."""

    def __init__(self, sink: _LineSink) -> None:
        self._sink = sink

    def __getattr__(self, method_name: str) -> Any:
        if method_name.startswith("_"):  # copy/pickle probes are not log levels
            raise AttributeError(method_name)
        urgent = method_name in _URGENT
        put = self._sink.put

        def emit(message: str) -> None:
            put(message, urgent)

        setattr(self, method_name, emit)  # built once per level and logger
        return emit


_sink: _LineSink | None = None


def flush() -> None:
    """Write every buffered line now (the daemon calls this before exiting)."""
    if _sink is not None:
        _sink.flush()


atexit.register(flush)


class _IsoTimestamp:
    """structlog processor: ``timestamp`` as ISO-8601 UTC, as ``TimeStamper(fmt="iso",
    utc=True)`` writes it (``2026-12-05T08:00:00.123456Z``; no fraction on a whole second),
    with the date and time of the current second formatted once per second, not per line."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock  # nanoseconds since the epoch
        self._second = -1
        self._prefix = ""

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = self._clock() // 1000  # microseconds, as datetime.now() keeps them
        second, micros = divmod(now, 1_000_000)
        if second != self._second:
            stamp = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._prefix = stamp.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        event_dict["timestamp"] = (
            f"{self._prefix}.{micros:06d}Z" if micros else f"{self._prefix}Z"
        )
        return event_dict


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(
    cfg: LoggingConfig, *, sink: TextIO | None = None, cache_logger_on_first_use: bool = True
) -> None:
    """Configure structlog for the daemon from ``[logging]``.

    Output goes to ``sink`` if given, else to ``cfg.file`` (appended, created mode 0600) or
    stdout. Calling it again replaces the previous configuration (and closes its file).
    """
    global _log_file, _sink
    flush()
    if _log_file is not None:
        _log_file.close()
        _log_file = None
    out: TextIO
    if sink is not None:
        out = sink
    elif cfg.file is not None:
        fd = os.open(cfg.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _log_file = out = open(fd, "a", encoding="utf-8")  # noqa: SIM115  (flushed per write)
    else:
        out = sys.stdout
    _sink = _LineSink(None if out is sys.stdout else out)
    logger = _LineLogger(_sink)
    renderer: Any
    if cfg.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _IsoTimestamp(),
            structlog.processors.format_exc_info,
            fan_out,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[cfg.level]),
        logger_factory=lambda *_: logger,
        cache_logger_on_first_use=cache_logger_on_first_use,
    )
