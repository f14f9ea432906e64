"""The async interface the daemon (and the embedded ``Orchestrator``) implements.

The socket server dispatches each request to the method of the same name with the request's
params as keyword arguments (already validated by :mod:`orchestrator.protocol`: defaults filled,
durations converted to float seconds, ``tags`` as a tuple). The client offers the same methods.

Errors are raised as :class:`orchestrator.errors.ServiceError` subclasses; anything else becomes an
``INTERNAL`` error reply. Results must be JSON values (dicts of str, int, float, bool, None, lists).

Streaming methods (``tail``, ``watch``, ``stream``) are plain ``def``\\ s returning async iterators
(an ``async def`` generator fits): the server sends one ``event`` line per item, then a final
``result`` line ``{"events": sent, "dropped": dropped}``. ``tail`` is lossy: a slow reader gets a
``{"type": "lagged", "dropped": N}`` event instead of unbounded buffering.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

JSONDict = dict[str, Any]


@runtime_checkable
class Service(Protocol):
    async def submit(
        self,
        workflow_id: str,
        input: Any,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        tags: Sequence[str] = (),
        delay: float | None = None,
        priority: int = 0,
    ) -> JSONDict:
        """Start a run (``delay`` seconds from now); return its run record once committed.
        An existing ``run_id`` or ``(workflow_id, idempotency_key)`` returns the existing run.
        Raises ``NotFound`` (unknown workflow), ``ValidationFailed``, ``StorageFull``,
        ``ShuttingDown``."""
        ...

    async def get(self, run_id: str) -> JSONDict:
        """The run record plus ``steps``, ``waitpoints`` and ``metadata``. ``NotFound``."""
        ...

    async def list(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> JSONDict:
        """``{"runs": [run record, ...]}``, newest first."""
        ...

    async def wait(self, run_id: str, *, timeout: float | None = None) -> JSONDict:
        """The run record once the run is terminal, or the current one after ``timeout``
        seconds."""
        ...

    async def cancel(
        self, run_id: str, *, compensate: bool = True, reason: str | None = None
    ) -> JSONDict:
        """Cancel the run (running compensations unless ``compensate`` is false); run record.
        ``RunNotActive`` for a terminal run."""
        ...

    async def pause(self, run_id: str) -> JSONDict:
        """Hold the run after its in-flight step; run record. ``RunNotActive`` if terminal."""
        ...

    async def resume(self, run_id: str) -> JSONDict:
        """Resume a paused run; run record. ``RunNotActive`` if it is not paused."""
        ...

    async def retry(self, run_id: str, *, mode: str = "resume") -> JSONDict:
        """Retry a failed run (``resume`` from its journal or ``retrigger`` from scratch);
        run record. ``RunNotActive`` if it is not terminal or completed."""
        ...

    async def replay(self, run_id: str) -> JSONDict:
        """Replay the run against its journal: ``{"diverged": bool, "detail": ...}``."""
        ...

    async def send_event(self, type: str, payload: Any, *, event_id: str | None = None) -> JSONDict:
        """Commit the event and resolve every matching waitpoint:
        ``{"event_id": ..., "resolved": n}``. Re-sending an ``event_id`` is a no-op."""
        ...

    async def signal(self, run_id: str, name: str, payload: Any) -> JSONDict:
        """Signal one run: ``{"delivered": bool}`` (false: it went to the run's inbox)."""
        ...

    async def complete_token(self, token_id: str, payload: Any) -> JSONDict:
        """Complete a token: ``{"run_id": ...}``. ``TokenConflict`` if already completed."""
        ...

    async def workflows(self) -> JSONDict:
        """``{"workflows": [...]}``: the registered workflows."""
        ...

    async def schedules(self) -> JSONDict:
        """``{"schedules": [...]}``: the schedules and their next fire times."""
        ...

    async def stats(self) -> JSONDict:
        """Counters of the daemon's long-lived parts (server, storage, actors, timers)."""
        ...

    def tail(
        self,
        *,
        run_id: str | None = None,
        workflow_id: str | None = None,
        level: str | None = None,
    ) -> AsyncIterator[JSONDict]:
        """Live log records (dicts as logged), optionally filtered; never ends by itself."""
        ...

    def watch(self, run_id: str) -> AsyncIterator[JSONDict]:
        """The run's state changes as they happen; ends when the run is terminal."""
        ...

    def stream(
        self, run_id: str, stream_id: str, *, follow: bool = False
    ) -> AsyncIterator[JSONDict]:
        """Chunks ``{stream_id, seq, encoding, chunk, final, at}`` recorded so far; with
        ``follow`` also the live ones until the final chunk."""
        ...
