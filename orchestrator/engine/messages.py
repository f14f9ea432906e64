"""What can be posted to a run's actor: a resolution already made durable, or a cancel."""

from __future__ import annotations

from dataclasses import dataclass

from runtime import journal as rj


@dataclass(frozen=True, slots=True)
class Resolve:
    resolution: rj.WaitpointResolved


@dataclass(frozen=True, slots=True)
class Cancel:
    reason: str | None
    compensate: bool
    code: str = "CANCELLED"
    """The cancelled run's error code (``CONCURRENCY_REPLACED`` when a newcomer replaced it)."""


Message = Resolve | Cancel
