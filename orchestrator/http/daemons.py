"""What the daemons page lists (SPEC §12, §13). With SQLite there is one daemon, the process
serving the page; a backend shared by many daemons (PostgreSQL) supplies its own ``Daemons``
callable listing each (from its heartbeat rows), and the page shows them all the same way."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from runtime.clock import Clock, SystemClock


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    name: str  # host:pid
    pid: int
    host: str
    version: str
    started_at: float
    database: str = ""
    socket: str = ""
    http: str = ""
    this: bool = True  # the daemon serving this page
    status: str = "running"
    extra: dict[str, str] = field(default_factory=dict)


Daemons = Callable[[], Sequence[DaemonInfo]]


def this_process(*, version: str = "unknown", database: str = "", socket_path: str = "",
                 http: Callable[[], str] = str, clock: Clock | None = None) -> Daemons:
    """The one daemon of a SQLite deployment: this process, started now. ``http`` says where
    it listens when asked (a port 0 in the config is chosen at start)."""
    started = (clock or SystemClock()).now()
    host = socket.gethostname()
    info = DaemonInfo(name=f"{host}:{os.getpid()}", pid=os.getpid(), host=host,
                      version=version, started_at=started, database=database,
                      socket=socket_path)
    return lambda: (replace(info, http=http()),)


def uptime(info: DaemonInfo, now: float | None = None) -> float:
    return max(0.0, (time.time() if now is None else now) - info.started_at)


class RegisteredDaemon(Protocol):
    """A row of the daemon registry (``storage.DaemonRecord``'s shape; the HTTP wing does not
    import storage)."""

    @property
    def daemon_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def version(self) -> str: ...

    @property
    def socket(self) -> str: ...

    @property
    def http(self) -> str: ...

    @property
    def started_at(self) -> float: ...

    @property
    def lease_until(self) -> float: ...

    @property
    def live(self) -> bool: ...

    @property
    def runs(self) -> int: ...

    @property
    def now(self) -> float: ...


class _Registry(Protocol):
    """What ``registered`` reads: the lease keeper's last view of the daemon registry."""

    @property
    def daemon_id(self) -> str: ...

    @property
    def known(self) -> Sequence[RegisteredDaemon]: ...

    @property
    def http(self) -> Callable[[], str]: ...


def registered(keeper: _Registry, *, database: str = "") -> Daemons:
    """The daemons registered on the database, as this daemon's lease keeper last read them
    (at its last renewal: at most a third of a lease old). Each row's own times are the
    database clock's, so a lapsed lease shows as such whichever machine serves the page.
    This daemon's own address is read live: its row was written before the listener bound
    its port, and is brought up to date only at the next renewal."""

    def listed() -> Sequence[DaemonInfo]:
        return [
            DaemonInfo(
                name=d.name, pid=d.pid, host=d.host, version=d.version,
                started_at=d.started_at, database=database, socket=d.socket,
                http=keeper.http() if d.daemon_id == keeper.daemon_id else d.http,
                this=d.daemon_id == keeper.daemon_id,
                status="running" if d.live else "lease expired",
                extra={"daemon id": d.daemon_id, "runs owned": str(d.runs),
                       "lease left": f"{max(0.0, d.lease_until - d.now):.1f}s"},
            )
            for d in keeper.known
        ]

    return listed
