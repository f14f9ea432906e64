"""The event loop a workflow body runs on: one per execution, driven by the executor.

A body's tasks, futures, timers, ``gather``, ``wait_for``, locks and queues all live on a
:class:`BodyLoop`. The loop owns no thread and no selector: the executor drives it from the host
loop (the daemon's), running its ready handles in slices with the body loop set as the running
loop. Everything that does real work (a step, a commit, a thread job) runs on the host loop and
is handed back through a body-loop future, and the loop counts it as pending while it runs.

That makes parking exact, as in Temporal's workflow instance (also an event loop whose ready
queue the worker drives): when nothing is ready, no host work is pending and no body timer is
armed, nothing can move the body but something from outside, a waitpoint resolution.

A body cannot do I/O on this loop: sockets, subprocesses, signal handlers and the like raise a
``RuntimeError`` that says the work belongs in ``ctx.step``.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import events
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any, NoReturn, TypeVar, TypeVarTuple, Unpack

from runtime import _signals

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]

# Handles run per slice before the driver lets the host loop take a turn. A body that spins on
# ``asyncio.sleep(0)`` must not starve the daemon; fan-in through a few task wake-ups stays in
# one slice.
SLICE_HANDLES = 1000


class _BodyTimer(asyncio.TimerHandle):
    """A body timer; ``_host`` is the host-loop timer that makes it ready, or None once fired."""

    __slots__ = ("_host",)

    _host: asyncio.TimerHandle | None


class _Handle(asyncio.Handle):
    """A ready handle made without ``Handle.__init__``'s debug checks (it is on every step)."""

    __slots__ = ()

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
    ) -> None:
        self._callback = callback
        self._args = args
        self._loop = loop
        self._context = contextvars.copy_context() if context is None else context
        self._cancelled = False
        self._repr = None
        self._source_traceback = None


class BodyLoop(asyncio.AbstractEventLoop):
    """A workflow body's event loop. Single-threaded: only ``call_soon_threadsafe`` is not."""

    def __init__(self, host: asyncio.AbstractEventLoop, name: str) -> None:
        self.host = host
        self.name = name
        self._ready: list[asyncio.Handle] = []
        self._waiter: asyncio.Future[None] | None = None  # the driver, waiting on the host
        self.timers = 0  # body timers armed on the host loop
        self.jobs = 0  # host work the body may be waiting for (steps, commits, threads)
        self._running = False
        self._closed = False
        self._deferring = False
        self._handler: ExceptionHandler | None = None
        self.main: asyncio.Future[Any] | None = None  # the body's main task, once started

    # ---------------------------------------------------------------- for the driver

    @property
    def has_ready(self) -> bool:
        return bool(self._ready)

    def run_slice(self) -> None:
        """Run ready handles (at most ``SLICE_HANDLES``) with this loop as the running loop.

        A ``BaseException`` escaping a handle never reaches the host loop. A task re-raises
        ``SystemExit`` and ``KeyboardInterrupt`` after storing them on itself, so whoever awaits
        the task gets them (and the run fails there); from a plain callback it is reported.
        """
        ran = 0
        events._set_running_loop(self)
        self._running = True
        try:
            while self._ready and ran < SLICE_HANDLES:
                batch = self._ready
                room = SLICE_HANDLES - ran
                if len(batch) > room:  # the rest goes first next slice, before what this adds
                    batch, self._ready = batch[:room], batch[room:]
                else:
                    self._ready = []
                ran += len(batch)
                for handle in batch:
                    if handle._cancelled:
                        continue
                    # What Handle._run does, without its frame: one less per step.
                    try:
                        handle._context.run(handle._callback, *handle._args)  # type: ignore[attr-defined]
                    except BaseException as exc:  # nothing may reach the host
                        self._escaped(handle, exc)
        finally:
            self._running = False
            events._set_running_loop(self.host)

    def _escaped(self, handle: asyncio.Handle, exc: BaseException) -> None:
        owner = getattr(getattr(handle, "_callback", None), "__self__", None)
        if isinstance(owner, asyncio.Task) and owner.done():
            return  # stored on the task: it fails whatever awaits it
        self.call_exception_handler(
            {"message": f"a workflow body callback raised {exc!r}", "exception": exc}
        )

    def waiter(self) -> asyncio.Future[None]:
        """A host future completed as soon as something becomes ready (or the host wakes us)."""
        waiter = self.host.create_future()
        if self._ready:
            waiter.set_result(None)
        else:
            self._waiter = waiter
        return waiter

    def wake(self) -> None:
        """Tell a waiting driver to look again (called on the host loop)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def defer_wake(self, on: bool) -> None:
        """While on, what becomes ready does not wake the driver (``host_work_done`` decides)."""
        self._deferring = on

    def host_work_done(self) -> None:
        """A piece of host work ended (``jobs`` counted down), its result handed to the body.

        If the driver is waiting, run the body's next slice right here instead of waking the
        driver for it: on the step path the body then starts its next step at once, and the
        driver is only woken when there is something for it to decide (the body parked, ended,
        or has more to run than one slice).
        """
        if self._waiter is None or self._running:
            return
        if self._ready:
            self.run_slice()
        main = self.main
        if self._ready or not (self.jobs or self.timers) or (main is not None and main.done()):
            self.wake()

    def mark_closed(self) -> None:
        self._closed = True
        self.main = None  # its task refers to this loop: a cycle the collector would have to free

    # ---------------------------------------------------------------- bridging host work

    def follow(self, fut: asyncio.Future[T]) -> asyncio.Future[T]:
        """A body future that follows ``fut`` (a host future); pending work until it is done.

        If the body stops waiting (its future is cancelled), ``fut`` is cancelled too.
        """
        body: asyncio.Future[T] = asyncio.Future(loop=self)
        self.jobs += 1

        def host_done(fut: asyncio.Future[T]) -> None:
            self.jobs -= 1
            if body.done():
                if not fut.cancelled():
                    fut.exception()  # retrieved: the body stopped caring
                self.wake()
            elif fut.cancelled():
                body.cancel()
            else:
                exc = fut.exception()
                if exc is None:
                    body.set_result(fut.result())
                else:
                    body.set_exception(exc)

        def body_done(body: asyncio.Future[T]) -> None:
            if body.cancelled() and not fut.done():
                fut.cancel()

        fut.add_done_callback(host_done)
        body.add_done_callback(body_done)
        return body

    # ---------------------------------------------------------------- scheduling

    def call_soon(
        self,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = _Handle(callback, args, self, context)
        self._ready.append(handle)
        if self._waiter is not None and not self._deferring:
            self.wake()
        return handle

    def call_soon_threadsafe(
        self,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        # Appended on the host thread: a slice may be swapping the ready list right now.
        self.host.call_soon_threadsafe(self._ready_from_thread, handle)
        return handle

    def _ready_from_thread(self, handle: asyncio.Handle) -> None:
        self._ready.append(handle)
        self.wake()

    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        timer = _BodyTimer(when, callback, args, self, context)
        timer._host = self.host.call_at(when, self._timer_fired, timer)
        self.timers += 1
        return timer

    def _timer_fired(self, timer: _BodyTimer) -> None:
        timer._host = None
        self.timers -= 1
        if not timer._cancelled:
            self._ready.append(timer)
        self.wake()

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        assert isinstance(handle, _BodyTimer)
        host = handle._host
        if host is not None:
            handle._host = None
            host.cancel()
            self.timers -= 1

    def time(self) -> float:
        return self.host.time()

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def run_in_executor(  # type: ignore[override]  # typeshed's TypeVarTuple signature
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        return self.follow(self.host.run_in_executor(executor, func, *args))

    # ---------------------------------------------------------------- state

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    # Every future, task and handle made on this loop asks; a C builtin answers (False)
    # without a Python frame.
    get_debug = bool  # bool() is False: debug mode is off

    def set_debug(self, enabled: bool) -> None:
        pass

    def get_task_factory(self) -> None:
        return None

    # ---------------------------------------------------------------- errors

    def get_exception_handler(self) -> ExceptionHandler | None:
        return self._handler if self._handler is not None else self.host.get_exception_handler()

    def set_exception_handler(self, handler: ExceptionHandler | None) -> None:
        self._handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.host.default_exception_handler(context)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), _signals.InternalSignal):
            return  # a branch unwound by our own signal, never awaited again: not news
        if isinstance(context.get("task"), asyncio.Task) and not context.get("exception"):
            return  # "destroyed but pending": a parked body let go of without close()
        context = {**context, "workflow_body": self.name}
        if self._handler is None:
            self.host.call_exception_handler(context)
            return
        try:
            self._handler(self, context)
        except Exception as exc:  # a user's handler failing must not stop the driver
            self.host.call_exception_handler(
                {"message": "exception in a body's exception handler", "exception": exc}
            )

    def __repr__(self) -> str:
        return (
            f"<BodyLoop {self.name} ready={len(self._ready)} jobs={self.jobs} "
            f"timers={self.timers}>"
        )



# Every way to do I/O, or to run the loop by hand: the body is replayed and may only compute and
# await ctx operations. asyncio's defaults raise a bare NotImplementedError; say what to do.
_REFUSED = {
    "run_forever": "run the loop itself",
    "run_until_complete": "run the loop itself",
    "stop": "stop the loop",
    "close": "close the loop",
    "shutdown_asyncgens": "shut down async generators",
    "shutdown_default_executor": "shut down the default executor",
    "set_default_executor": "set the default executor",
    "set_task_factory": "set a task factory",
    "getaddrinfo": "resolve host names",
    "getnameinfo": "resolve host names",
    "create_connection": "open a connection",
    "create_server": "start a server",
    "sendfile": "send a file",
    "start_tls": "start TLS",
    "create_unix_connection": "open a Unix socket connection",
    "create_unix_server": "start a Unix socket server",
    "connect_accepted_socket": "adopt an accepted socket",
    "create_datagram_endpoint": "open a datagram endpoint",
    "connect_read_pipe": "read a pipe",
    "connect_write_pipe": "write a pipe",
    "subprocess_shell": "start a subprocess",
    "subprocess_exec": "start a subprocess",
    "add_reader": "watch a file descriptor",
    "remove_reader": "watch a file descriptor",
    "add_writer": "watch a file descriptor",
    "remove_writer": "watch a file descriptor",
    "sock_recv": "read a socket",
    "sock_recv_into": "read a socket",
    "sock_recvfrom": "read a socket",
    "sock_recvfrom_into": "read a socket",
    "sock_sendall": "write a socket",
    "sock_sendto": "write a socket",
    "sock_connect": "connect a socket",
    "sock_accept": "accept on a socket",
    "sock_sendfile": "send a file on a socket",
    "add_signal_handler": "install a signal handler",
    "remove_signal_handler": "remove a signal handler",
}


def _refuse(method: str, what: str) -> Callable[..., NoReturn]:
    def refused(self: BodyLoop, *args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError(
            f"a workflow body cannot {what} ({method}) on its event loop: the body is replayed "
            "and may only compute and await ctx operations; do I/O inside a step "
            "(await ctx.step('id', fn, ...))"
        )

    refused.__name__ = refused.__qualname__ = method
    return refused


for _method, _what in _REFUSED.items():
    setattr(BodyLoop, _method, _refuse(_method, _what))


def new_body_loop(host: asyncio.AbstractEventLoop, name: str) -> BodyLoop:
    """A body loop for one execution, driven from ``host``."""
    return BodyLoop(host, name)  # type: ignore[abstract]  # the I/O methods come from _REFUSED
