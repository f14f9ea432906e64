"""The one boundary where asyncpg errors become ``storage.errors`` types (cause kept)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import orjson

from storage import errors

_BUSY = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,
)
# The server or the session went away (a restart, a failover, pg_terminate_backend, a network
# cut): transient, like a lock held too long. The op may or may not have committed, which every
# caller of a storage write already allows for (ops are idempotent; the engine re-reads).
_GONE = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    ConnectionError,
    OSError,
)
_FULL = (asyncpg.exceptions.DiskFullError, asyncpg.exceptions.InsufficientResourcesError)
_INVALID = (
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.DataError,  # bad value in a query argument (client or server side)
    asyncpg.exceptions.CharacterNotInRepertoireError,
)


def is_batch_fatal(exc: BaseException) -> bool:
    """True when the transaction (or the connection) cannot be trusted any more: every caller
    of the batch fails, not only the one whose op raised."""
    if isinstance(exc, _FULL + _BUSY):
        return True
    if isinstance(exc, asyncpg.exceptions.DataError):
        return False
    return isinstance(
        exc,
        asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.InternalClientError
        | asyncpg.exceptions.InFailedSQLTransactionError
        | asyncpg.exceptions.OperatorInterventionError
        | asyncpg.exceptions.PostgresSystemError
        | OSError
        | ConnectionError,
    )


def connection_unusable(exc: BaseException) -> bool:
    """The session is gone or its protocol state is broken (seen after a SIGSTOP past the
    lease: "another operation is in progress"): only a new connection can go on."""
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        return "closed" in str(exc)  # "connection is closed"; other InterfaceErrors are bugs
    return isinstance(exc, (*_GONE, asyncpg.exceptions.InternalClientError))


def translate(exc: BaseException) -> BaseException:
    """The storage error for ``exc`` (a new instance with ``exc`` as its cause)."""
    if isinstance(exc, errors.StorageError) or not isinstance(exc, Exception):
        return exc
    out: errors.StorageError
    state = getattr(exc, "sqlstate", None)
    data = {"sqlstate": state} if state else {}
    if isinstance(exc, _FULL):
        out = errors.StorageFull(f"storage full: {exc}", data=data)
    elif isinstance(exc, _BUSY):
        out = errors.StorageBusy(f"storage busy: {exc}", data=data)
    elif connection_unusable(exc):
        out = errors.StorageBusy(f"storage unavailable: {type(exc).__name__}: {exc}",
                                 data={**data, "unavailable": True})
    elif isinstance(exc, _INVALID):
        out = errors.InvalidOperation(f"constraint failed: {exc}", data=data)
    elif isinstance(exc, orjson.JSONEncodeError):
        out = errors.InvalidOperation(f"value is not JSON-serializable: {exc}")
    elif isinstance(exc, asyncpg.PostgresError | asyncpg.exceptions.InterfaceError):
        out = errors.StorageError(f"storage error: {exc}", data=data)
    else:
        out = errors.StorageError(f"storage operation failed: {type(exc).__name__}: {exc}")
    out.__cause__ = exc
    return out


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise any driver error inside the block as its ``storage.errors`` type."""
    try:
        yield
    except errors.StorageError:
        raise
    except (asyncpg.PostgresError, asyncpg.exceptions.InterfaceError, OSError,
            orjson.JSONEncodeError, ValueError) as exc:
        raise translate(exc) from exc
