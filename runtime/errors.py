"""User-facing workflow errors and their recorded (JSON) form.

Every error that ends a step or a run is recorded as
``{category, code, name, message, stack, cause, data}``; a recorded error re-raises on replay as
the same class with the same code.
"""

from __future__ import annotations

import builtins
import traceback
from enum import StrEnum
from typing import Any, ClassVar


class ErrorCategory(StrEnum):
    USER_ERROR = "USER_ERROR"
    RUNTIME_ERROR = "RUNTIME_ERROR"


class WorkflowError(Exception):
    """Base class of workflow errors. The first positional argument is always the message."""

    default_code: ClassVar[str] = "WORKFLOW_ERROR"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        category: str | None = None,
        data: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.category = category or ErrorCategory.USER_ERROR
        self.data = data

    def __str__(self) -> str:
        return self.message


class FatalError(WorkflowError):
    """An error that is never retried."""

    default_code = "FATAL"


class RetryableError(WorkflowError):
    """An error that is retried; ``retry_after`` overrides the policy's delay."""

    default_code = "RETRYABLE"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        retry_after: Any = None,
        category: str | None = None,
        data: Any = None,
    ) -> None:
        super().__init__(message, code=code, category=category, data=data)
        self.retry_after = retry_after


class StepTimeoutError(WorkflowError):
    default_code = "TIMEOUT"


class RateLimitExceeded(RetryableError):
    default_code = "RATE_LIMITED"


class ChildRunError(WorkflowError):
    """A child run started with ``ctx.invoke`` did not complete; ``code`` is the child's code."""

    default_code = "CHILD_RUN_FAILED"


class TokenConflictError(WorkflowError):
    default_code = "TOKEN_CONFLICT"


_BY_NAME: dict[str, type[WorkflowError]] = {
    cls.__name__: cls
    for cls in (
        WorkflowError,
        FatalError,
        RetryableError,
        StepTimeoutError,
        RateLimitExceeded,
        ChildRunError,
        TokenConflictError,
    )
}


def serialize_error(err: BaseException) -> dict[str, Any]:
    """The recorded form of ``err``: JSON-ready, with its cause chain.

    An error rebuilt from a record (``deserialize_error``) is recorded as that record, so a
    run that ends with a step's recorded error reports it the same live and on replay.
    """
    recorded = getattr(err, "recorded", None)
    if isinstance(recorded, dict):
        return dict(recorded)
    if isinstance(err, WorkflowError):
        code, category, data = err.code, str(err.category), err.data
        message = err.message
    else:
        code, category, data = "UNKNOWN", str(ErrorCategory.USER_ERROR), None
        message = str(err)
    if isinstance(err, BaseExceptionGroup):
        message = err.message
    cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return {
        "category": category,
        "code": code,
        "name": type(err).__name__,
        "message": message,
        "stack": "".join(traceback.format_exception(err)) if err.__traceback__ else None,
        "cause": serialize_error(cause) if cause is not None else None,
        "data": _json_safe(data),
    }


def error_dict(
    code: str, message: str, *, name: str = "WorkflowError", data: Any = None
) -> dict[str, Any]:
    """A recorded error made by the engine itself (no exception object at hand)."""
    return {
        "category": str(ErrorCategory.RUNTIME_ERROR),
        "code": code,
        "name": name,
        "message": message,
        "stack": None,
        "cause": None,
        "data": data,
    }


def deserialize_error(record: dict[str, Any]) -> Exception:
    """Rebuild an exception from its recorded form, for re-raising on replay.

    Our own classes and Python's built-in exception classes come back as themselves, so an
    ``except KeyError`` in the body behaves the same live and on replay. Any other class comes
    back as a ``WorkflowError`` with the recorded code (nothing is imported by name).
    """
    name = str(record.get("name"))
    message = str(record.get("message") or "")
    builtin = getattr(builtins, name, None)
    if (
        name not in _BY_NAME
        and isinstance(builtin, type)
        and issubclass(builtin, Exception)
        and not issubclass(builtin, BaseExceptionGroup)
    ):
        try:
            rebuilt: Exception = builtin(message)
        except TypeError:  # a built-in with a constructor of its own (UnicodeDecodeError, …)
            rebuilt = WorkflowError(message, code=str(record.get("code") or "UNKNOWN"))
        rebuilt.recorded = record  # type: ignore[attr-defined]  # kept for re-recording
        return rebuilt
    cls = _BY_NAME.get(name, WorkflowError)
    err = cls(message)
    err.code = str(record.get("code") or cls.default_code)
    err.category = str(record.get("category") or ErrorCategory.USER_ERROR)
    err.data = record.get("data")
    err.recorded = record  # type: ignore[attr-defined]  # keep the exact record for re-recording
    return err


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return repr(value)
