"""What the daemons page lists (SPEC §12, §13). With SQLite there is one daemon, the process
serving the page; a backend shared by many daemons (PostgreSQL) supplies its own ``Daemons``
callable listing each (from its heartbeat rows), and the page shows them all the same way."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

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
