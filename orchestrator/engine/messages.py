"""What can be posted to a run's actor: a resolution already made durable, or a cancel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    @classmethod
    def requested(cls, request: Any) -> Cancel:
        """The cancel a run's stored ``cancel_requested`` asks for."""
        req = request if isinstance(request, dict) else {}
        return cls(req.get("reason"), bool(req.get("compensate", True)),
                   str(req.get("code") or "CANCELLED"))


Message = Resolve | Cancel
