"""Authoring SDK and executor for durable workflows. Pure: no sockets, no files, no SQLite."""

from __future__ import annotations

from runtime.context import Context
from runtime.errors import (
    ChildRunError,
    FatalError,
    RateLimitExceeded,
    RetryableError,
    StepTimeoutError,
    TokenConflictError,
    WorkflowError,
)
from runtime.flow import Batch, CancelOn, Concurrency, Debounce, OnEvent, Throttle
from runtime.ratelimit import RateLimit
from runtime.retry import RetryPolicy
from runtime.schedules import Schedule
from runtime.status import RunStatus
from runtime.steps import StepContext, current_step
from runtime.workflow import workflow

__all__ = [
    "Batch",
    "CancelOn",    "ChildRunError",
    "Concurrency",
    "Context",
    "Debounce",
    "FatalError",
    "OnEvent",
    "RateLimit",
    "RateLimitExceeded",
    "RetryPolicy",
    "RetryableError",
    "RunStatus",
    "Schedule",
    "StepContext",
    "StepTimeoutError",
    "Throttle",
    "TokenConflictError",
    "WorkflowError",
    "current_step",
    "workflow",
]
