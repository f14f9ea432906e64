"""The one boundary where ``sqlite3`` errors become ``storage.errors`` types.

The driver error is kept as ``__cause__``. ``translate`` serves the writer thread (which hands
errors to futures); ``translate_errors`` wraps every read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from storage import errors

_FULL = sqlite3.SQLITE_FULL
_SHM_FULL = sqlite3.SQLITE_IOERR_SHMSIZE
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# Errors after which the current transaction cannot be trusted: the whole batch fails.
_BATCH_FATAL = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_batch_fatal(exc: BaseException) -> bool:
    """True for I/O-level failures that doom the whole transaction, not just one caller's ops."""
    return isinstance(exc, sqlite3.Error) and primary_code(exc) in _BATCH_FATAL


def translate(exc: BaseException) -> BaseException:
    """Return the storage error for ``exc`` (a new instance with ``exc`` as its cause).

    Storage errors pass through unchanged; non-``Exception`` base exceptions are returned as is.
    """
    if isinstance(exc, errors.StorageError) or not isinstance(exc, Exception):
        return exc
    out: errors.StorageError
    if isinstance(exc, sqlite3.Error):
        code = primary_code(exc)
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        # The wal-index (-shm) failing to grow on a full disk is a full disk too, not an I/O
        # failure: the daemon must keep serving and resume when space returns.
        if code == _FULL or getattr(exc, "sqlite_errorcode", None) == _SHM_FULL:
            out = errors.StorageFull(f"storage full: {exc} ({name})", data={"sqlite": name})
        elif code in _BUSY:
            out = errors.StorageBusy(f"storage busy: {exc} ({name})", data={"sqlite": name})
        elif isinstance(exc, sqlite3.IntegrityError):
            out = errors.InvalidOperation(
                f"constraint failed: {exc} ({name})", data={"sqlite": name}
            )
        else:
            out = errors.StorageError(f"storage error: {exc} ({name})", data={"sqlite": name})
    elif isinstance(exc, orjson.JSONEncodeError):
        out = errors.InvalidOperation(f"value is not JSON-serializable: {exc}")
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
    except (sqlite3.Error, orjson.JSONEncodeError, ValueError) as exc:
        raise translate(exc) from exc
