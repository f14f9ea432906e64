"""This daemon's row in the daemon registry and the lease it renews (SPEC §13).

At start the daemon registers under a fresh id (never reused, so a daemon that lost its lease
can never pass for its old self) and from then on every commit is fenced by that lease where
the backend shares its database between daemons (``Storage.fence``). A renewal every third of
the lease keeps it; the database clock judges it, never this machine's.

Losing the lease is terminal where writes are fenced: another daemon may have adopted this
daemon's runs, so it must not write for them again. The keeper calls ``on_lost`` (the engine's
fail-stop) as soon as it knows, either because the database refused a renewal or because its
own monotonic clock says a whole lease passed without a renewal (a SIGSTOP, a VM pause): it
does not wait for the database to say so. Where nothing is fenced (SQLite: one daemon per file)
a lapsed lease is simply registered again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

import storage

log = structlog.get_logger("wf.lease")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this daemon is, as ``wf daemons`` shows it."""

    name: str
    host: str
    pid: int
    version: str
    socket: str
    daemon_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of_this_process(cls, name: str = "", *, version: str = "unknown",
                        socket_path: str = "") -> Identity:
        host = socket.gethostname()
        return cls(name=name or f"{host}:{os.getpid()}", host=host, pid=os.getpid(),
                   version=version, socket=socket_path)


class LeaseKeeper:
    """Registers this daemon, renews its lease, and retires it on a clean stop."""

    def __init__(
        self,
        storage_: storage.Storage,
        identity: Identity,
        lease: float,
        *,
        on_lost: Callable[[BaseException], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"daemon.lease must be positive, got {lease!r}")
        self.storage = storage_
        self.identity = identity
        self.lease = lease
        self._on_lost = on_lost
        self._monotonic = monotonic
        self._fenced = storage_.capabilities().fenced
        self._task: asyncio.Task[None] | None = None
        self._trusted_since = 0.0  # monotonic time the last successful renewal was sent
        self.lost: BaseException | None = None
        self.http: Callable[[], str] = str  # where the HTTP listener is, once it is known
        self.known: list[storage.DaemonRecord] = []  # the registry as last read

    @property
    def daemon_id(self) -> str:
        return self.identity.daemon_id

    async def start(self) -> None:
        await self._register()
        self.storage.fence(self.daemon_id, self.lease)
        self.known = await self.storage.list_daemons()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lease")

    async def _register(self) -> None:
        i = self.identity
        self._trusted_since = self._monotonic()
        await self.storage.execute(storage.RegisterDaemon(
            daemon_id=i.daemon_id, name=i.name, host=i.host, pid=i.pid, version=i.version,
            socket=i.socket, http=self.http(), lease=self.lease))
        log.info("daemon.registered", daemon_id=i.daemon_id, name=i.name, lease=self.lease)

    async def _run(self) -> None:
        while self.lost is None:
            await asyncio.sleep(self.lease / 3)
            # A renewal stuck in the database (a lock, a dead connection) must not keep us
            # trusting a lease that is running out: give up on it when the lease would.
            trust = self._trusted_since + self.lease - self._monotonic()
            try:
                await asyncio.wait_for(self.renew(), timeout=max(0.0, trust))
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                if self._fenced:
                    self._lose(storage.OwnershipLost(self.daemon_id))
            except storage.OwnershipLost as exc:
                self._lose(exc)
            except Exception as exc:  # the database is away: the lease may still run out
                log.warning("daemon.lease_renewal_failed", error=repr(exc))

    async def renew(self) -> None:
        """One renewal (the loop's body; tests call it to step the keeper by hand)."""
        sent = self._monotonic()
        if self._fenced and sent - self._trusted_since >= self.lease:
            # A whole lease without a renewal (stopped, paused, cut off): others may have
            # adopted our runs already. Do not ask, do not write: stop.
            self._lose(storage.OwnershipLost(self.daemon_id))
            return
        until = await self.storage.execute(
            storage.RenewLease(self.daemon_id, self.lease, http=self.http() or None))
        if until is None:
            if self._fenced:
                self._lose(storage.OwnershipLost(self.daemon_id))
                return
            log.warning("daemon.lease_lapsed", daemon_id=self.daemon_id,
                        detail="one daemon per database: registered again")
            await self._register()
            return
        self._trusted_since = sent
        self.known = await self.storage.list_daemons()

    def _lose(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
            log.critical("daemon.lease_lost", daemon_id=self.daemon_id,
                         detail="another daemon may own this daemon's runs: stopping")
            self._on_lost(exc)

    async def close(self) -> None:
        """Stop renewing; on a clean stop release the daemon's runs and delete its row."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.lost is None:
            try:
                await self.storage.execute(storage.RetireDaemon(self.daemon_id))
            except storage.StorageError as exc:  # its lease runs out anyway
                log.warning("daemon.retire_failed", error=repr(exc))
