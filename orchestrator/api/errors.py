"""Errors the daemon's service answers with, one class per wire code.

Each class knows its ``code`` and builds its message from the facts given to its constructor.
The server turns a :class:`ServiceError` into an error line (``code``, ``message``, ``data``);
the client rebuilds the same class from the line with :func:`from_wire`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, ClassVar, NoReturn

from storage import errors as storage_errors


class ErrorCode(StrEnum):
    """Every error code that can appear on the wire (SPEC §6), plus ``INTERNAL``."""

    PARSE_ERROR = "PARSE_ERROR"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    METHOD_NOT_FOUND = "METHOD_NOT_FOUND"
    INVALID_PARAMS = "INVALID_PARAMS"
    NOT_FOUND = "NOT_FOUND"
    VALIDATION = "VALIDATION"
    RUN_NOT_ACTIVE = "RUN_NOT_ACTIVE"
    NOT_FRONTIER = "NOT_FRONTIER"
    TOKEN_CONFLICT = "TOKEN_CONFLICT"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    STORAGE_FULL = "STORAGE_FULL"
    STORAGE_BUSY = "STORAGE_BUSY"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    INTERNAL = "INTERNAL"


class ServiceError(Exception):
    """Base class: an error the service reports to its caller (over the socket or embedded)."""

    code: ClassVar[str] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = dict(data) if data else {}

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` object of an error line."""
        return {"code": str(self.code), "message": self.message, "data": self.data}


class InternalError(ServiceError):
    """An unexpected failure inside the daemon; details are in the daemon's log."""

    code = ErrorCode.INTERNAL

    def __init__(self, detail: str) -> None:
        super().__init__(f"internal error: {detail}")


class ParseError(ServiceError):
    """The request line is not valid JSON or not a request object."""

    code = ErrorCode.PARSE_ERROR

    def __init__(self, detail: str) -> None:
        super().__init__(f"cannot parse request: {detail}")


class RequestTooLarge(ServiceError):
    """A request line is longer than ``daemon.max_request_bytes``."""

    code = ErrorCode.REQUEST_TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"request line exceeds the limit of {limit} bytes; connection closed",
            data={"limit": limit},
        )


class MethodNotFound(ServiceError, LookupError):
    code = ErrorCode.METHOD_NOT_FOUND

    def __init__(self, method: str) -> None:
        super().__init__(f"unknown method {method!r}", data={"method": method})


class InvalidParams(ServiceError, ValueError):
    """A request parameter is missing, unknown or of the wrong type; ``data.field`` names it."""

    code = ErrorCode.INVALID_PARAMS

    def __init__(self, field: str, expected: str, got: str) -> None:
        super().__init__(
            f"invalid params: {field!r} expected {expected}, got {got}",
            data={"field": field, "expected": expected, "got": got},
        )


class NotFound(ServiceError, LookupError):
    """No ``kind`` with that id; ``data`` holds ``{"<kind>_id": id}``."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, kind: str, id: str) -> None:
        super().__init__(f"{kind} {id!r} not found", data={f"{kind}_id": id})


class ValidationFailed(ServiceError, ValueError):
    """The workflow's ``input_validator`` rejected the input."""

    code = ErrorCode.VALIDATION

    def __init__(self, workflow_id: str, reason: str) -> None:
        super().__init__(
            f"input rejected by workflow {workflow_id!r}: {reason}",
            data={"workflow_id": workflow_id, "reason": reason},
        )


class RunNotActive(ServiceError):
    """The run's status does not allow the operation; ``data.status`` gives the status."""

    code = ErrorCode.RUN_NOT_ACTIVE

    def __init__(self, run_id: str, status: str, operation: str) -> None:
        super().__init__(
            f"cannot {operation} run {run_id!r}: its status is {status!r}",
            data={"run_id": run_id, "status": status, "operation": operation},
        )


class NotFrontier(ServiceError):
    """``amend`` of a step that is not the run's frontier: ``data.later`` lists the journal
    entries recorded after it (``{"type", "id", "seq"}``); fork the run instead."""

    code = ErrorCode.NOT_FRONTIER

    def __init__(self, message: str, data: dict[str, Any]) -> None:
        super().__init__(message, data={k: v for k, v in data.items() if k != "code"})


class TokenConflict(ServiceError):
    code = ErrorCode.TOKEN_CONFLICT

    def __init__(self, token_id: str) -> None:
        super().__init__(f"token {token_id!r} is already completed", data={"token_id": token_id})


class PermissionDenied(ServiceError):
    code = ErrorCode.PERMISSION_DENIED

    def __init__(self, uid: int) -> None:
        super().__init__(
            f"peer uid {uid} is not allowed on this socket (see daemon.allowed_uids)",
            data={"uid": uid},
        )


class StorageFull(ServiceError):
    code = ErrorCode.STORAGE_FULL

    def __init__(self, detail: str = "") -> None:
        suffix = f": {detail}" if detail else ""
        super().__init__(
            f"storage is full, nothing was committed{suffix}; retry when space returns"
        )


class StorageBusy(ServiceError):
    """The database stayed locked past its busy timeout; nothing was committed: retry."""

    code = ErrorCode.STORAGE_BUSY

    def __init__(self, detail: str = "") -> None:
        suffix = f": {detail}" if detail else ""
        super().__init__(f"storage is busy, nothing was committed{suffix}; retry")


class Rejected(ServiceError, ValueError):
    """Storage refused the operation on the stored state (e.g. a type mismatch)."""

    code = ErrorCode.VALIDATION

    def __init__(self, detail: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(detail, data=data)


class ShuttingDown(ServiceError):
    code = ErrorCode.SHUTTING_DOWN

    def __init__(self) -> None:
        super().__init__("the daemon is shutting down and takes no new work")


ERROR_CLASSES: dict[str, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InternalError,
        ParseError,
        RequestTooLarge,
        MethodNotFound,
        InvalidParams,
        NotFound,
        ValidationFailed,
        RunNotActive,
        NotFrontier,
        TokenConflict,
        PermissionDenied,
        StorageFull,
        StorageBusy,
        ShuttingDown,
    )
}


def class_for_code(code: str) -> type[ServiceError]:
    """The class for a wire code; an unknown code maps to :class:`ServiceError` itself."""
    return ERROR_CLASSES.get(code, ServiceError)


def from_wire(code: str, message: str, data: dict[str, Any] | None = None) -> ServiceError:
    """Rebuild the error of an error line without re-running its constructor."""
    cls = class_for_code(code)
    err = cls.__new__(cls)
    ServiceError.__init__(err, message, data=data)
    return err


def raise_from_storage(exc: storage_errors.StorageError) -> NoReturn:
    """The one storage → service translation: a storage error reaches the caller with the
    code that says whose fault it is, never as ``INTERNAL`` (the original stays as
    ``__cause__``); one this table does not know is re-raised as it is."""
    if isinstance(exc, storage_errors.StorageFull):
        raise StorageFull(str(exc)) from exc
    if isinstance(exc, storage_errors.StorageBusy):
        raise StorageBusy(str(exc)) from exc
    if isinstance(exc, storage_errors.TokenConflict):
        raise TokenConflict(exc.token_id) from exc
    if isinstance(exc, storage_errors.NotFound):
        raise NotFound(exc.kind, exc.key) from exc
    if isinstance(exc, storage_errors.InvalidOperation):
        raise Rejected(exc.message, exc.data) from exc
    if isinstance(exc, storage_errors.StorageClosed):
        raise ShuttingDown() from exc
    raise exc


@contextlib.contextmanager
def from_storage() -> Iterator[None]:
    """:func:`raise_from_storage` around a block."""
    try:
        yield
    except storage_errors.StorageError as exc:
        raise_from_storage(exc)
