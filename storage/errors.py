"""Errors raised by every storage backend.

Each class knows its wire ``code`` (SPEC §6) and builds its message from the facts it is given.
Backends translate their driver's errors into these at one boundary and keep the driver error as
``__cause__``; nothing outside ``storage/`` ever sees a driver exception.
"""

from __future__ import annotations

from typing import Any, ClassVar


class StorageError(Exception):
    """A storage operation failed; nothing of the failed operation was committed."""

    code: ClassVar[str] = "STORAGE_ERROR"

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = data or {}

    def __str__(self) -> str:
        return self.message


class StorageFull(StorageError):
    """The disk (or the database's page limit) is full. The whole batch was rolled back;
    committed data stays readable and writes succeed again once space returns."""

    code = "STORAGE_FULL"


class StorageBusy(StorageError):
    """The database stayed locked by another connection for longer than the busy timeout."""

    code = "STORAGE_BUSY"


class StorageClosed(StorageError):
    """The storage was closed (or its writer stopped) before the operation could run."""

    code = "STORAGE_CLOSED"


class StorageLocked(StorageError):
    """Another process holds the database (one daemon per database)."""

    code = "STORAGE_LOCKED"

    def __init__(self, where: str) -> None:
        super().__init__(
            f"database {where} is in use by another daemon (it holds the database's advisory "
            "lock); stop it first or use another storage.url",
            data={"database": where},
        )


class OwnershipLost(StorageError):
    """This daemon's lease ran out (judged by the database clock): another daemon may have
    adopted its runs, so the database refuses its writes (SPEC §13 fencing). Terminal for the
    daemon: it must stop without writing anything more."""

    code = "OWNERSHIP_LOST"

    def __init__(self, daemon_id: str) -> None:
        super().__init__(
            f"daemon {daemon_id} lost its lease: its writes are refused (fenced) and it stops",
            data={"daemon_id": daemon_id},
        )


class RunNotOwned(StorageError):
    """Another daemon drives this run (SPEC §13): a write of its journal or status from this
    daemon is refused. The daemon drops its actor for the run; the owner goes on with it."""

    code = "RUN_NOT_OWNED"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is driven by another daemon: this write was refused",
                         data={"run_id": run_id})


class SchemaTooNew(StorageError):
    """The database was written by a newer build: its schema version is unknown to this one."""

    code = "SCHEMA_TOO_NEW"

    def __init__(self, path: str, found: int, known: int) -> None:
        super().__init__(
            f"database {path} has schema version {found}, but this build knows versions up to "
            f"{known}; upgrade the engine to open it",
            data={"path": path, "found": found, "known": known},
        )
        self.found = found
        self.known = known


class NotFound(StorageError, LookupError):
    """The record an operation refers to does not exist."""

    code = "NOT_FOUND"

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found", data={"kind": kind, "key": key})
        self.kind = kind
        self.key = key


class TokenConflict(StorageError):
    """The token was already completed (or timed out), or its id belongs to another waitpoint."""

    code = "TOKEN_CONFLICT"

    def __init__(self, token_id: str, reason: str = "already completed") -> None:
        super().__init__(
            f"token {token_id!r} {reason}", data={"token_id": token_id, "reason": reason}
        )
        self.token_id = token_id


class InvalidOperation(StorageError, ValueError):
    """The operation cannot apply to the stored state (e.g. incrementing a non-number), or a
    value in it is not JSON-serializable."""

    code = "VALIDATION"
