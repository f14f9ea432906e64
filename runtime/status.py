"""Run statuses and waitpoint kinds."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.COMPENSATED,
        RunStatus.COMPENSATION_FAILED,
        RunStatus.TIMED_OUT,
    }
)


class WaitpointKind(StrEnum):
    DATETIME = "DATETIME"
    EVENT = "EVENT"
    SIGNAL = "SIGNAL"
    MANUAL = "MANUAL"
    RUN = "RUN"


class ResolutionSource(StrEnum):
    LIVE = "live"
    INBOX = "inbox"
    REPLAY = "replay"
    TIMEOUT = "timeout"
