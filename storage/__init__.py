"""Storage: the ``Storage`` Protocol, its records and ops, and the backends.

The package face holds only pure modules (records, ops, errors, the Protocol); a backend is
loaded on first use of its name (``storage.SQLiteStorage``), so code that only needs the
Protocol and its records (the API views, the client) never imports a database driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from storage.errors import (
    InvalidOperation,
    NotFound,
    SchemaTooNew,
    StorageBusy,
    StorageClosed,
    StorageError,
    StorageFull,
    TokenConflict,
)
from storage.ops import (
    UNSET,
    AppendStreamChunk,
    ApplyMetadata,
    ChildRunCreated,
    ClaimDueTimers,
    CompleteToken,
    CreateChildRun,
    CreateRun,
    DeleteSchedule,
    DeleteTimer,
    EndPending,
    EventRecorded,
    FiredTimer,
    FireTimer,
    PutRateLimit,
    RecordCompensation,
    RecordEvent,
    RecordStepAttempt,
    RegisterWaitpoint,
    ReschedulePending,
    ResolveWaitpoint,
    RunCreated,
    SendSignal,
    SignalSent,
    UpdateRun,
    UpsertSchedule,
    UpsertTimer,
    WaitpointRegistered,
    WriteBatch,
    WriteOp,
)
from storage.protocol import Storage
from storage.records import (
    JSON,
    NON_TERMINAL_STATUSES,
    TERMINAL_STATUSES,
    CompensationRecord,
    CompensationStatus,
    EventRecord,
    Journal,
    Matcher,
    MetadataOpKind,
    RateLimitState,
    ResolutionSource,
    RunRecord,
    RunStatus,
    ScheduleRecord,
    SignalRecord,
    StepAttemptRecord,
    StepRecord,
    StepStatus,
    StorageCounts,
    StreamChunk,
    TimerKind,
    TimerRecord,
    TokenRecord,
    WaitpointKind,
    WaitpointRecord,
    WaitpointStatus,
)

if TYPE_CHECKING:
    from storage.sqlite import SQLiteStorage


def __getattr__(name: str) -> Any:
    if name == "SQLiteStorage":
        from storage.sqlite import SQLiteStorage

        return SQLiteStorage
    raise AttributeError(f"module 'storage' has no attribute {name!r}")


__all__ = [
    "JSON",
    "NON_TERMINAL_STATUSES",
    "TERMINAL_STATUSES",
    "UNSET",
    "AppendStreamChunk",
    "ApplyMetadata",
    "ChildRunCreated",
    "ClaimDueTimers",
    "CompensationRecord",
    "CompensationStatus",
    "CompleteToken",
    "CreateChildRun",
    "CreateRun",
    "DeleteSchedule",
    "DeleteTimer",
    "EndPending",
    "EventRecord",
    "EventRecorded",
    "FireTimer",
    "FiredTimer",
    "InvalidOperation",
    "Journal",
    "Matcher",
    "MetadataOpKind",
    "NotFound",
    "PutRateLimit",
    "RateLimitState",
    "RecordCompensation",
    "RecordEvent",
    "RecordStepAttempt",
    "RegisterWaitpoint",
    "ReschedulePending",
    "ResolutionSource",
    "ResolveWaitpoint",
    "RunCreated",
    "RunRecord",
    "RunStatus",
    "SQLiteStorage",
    "ScheduleRecord",
    "SchemaTooNew",
    "SendSignal",
    "SignalRecord",
    "SignalSent",
    "StepAttemptRecord",
    "StepRecord",
    "StepStatus",
    "Storage",
    "StorageBusy",
    "StorageClosed",
    "StorageCounts",
    "StorageError",
    "StorageFull",
    "StreamChunk",
    "TimerKind",
    "TimerRecord",
    "TokenConflict",
    "TokenRecord",
    "UpdateRun",
    "UpsertSchedule",
    "UpsertTimer",
    "WaitpointKind",
    "WaitpointRecord",
    "WaitpointRegistered",
    "WaitpointStatus",
    "WriteBatch",
    "WriteOp",
]
