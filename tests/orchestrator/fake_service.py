"""An in-memory Service for wire-layer tests (server, client, CLI). No engine behind it.

Workflows: ``ok`` completes at once with ``{"echo": input}``; ``fail`` ends ``failed``; ``slow``
stays ``running`` until it gets the signal ``finish``; ``strict`` rejects inputs without ``x``.
``get("crash")`` raises a plain ``RuntimeError`` (an unexpected handler failure).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from orchestrator.api import errors

TERMINAL = {"completed", "failed", "cancelled", "compensated", "compensation_failed", "timed_out"}
WORKFLOWS = ("ok", "fail", "slow", "strict")


class FakeService:
    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.tokens: set[str] = set()
        self.events: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._changed: dict[str, asyncio.Event] = {}
        self._n = 0
        self.tail_records: list[dict[str, Any]] = [
            {"event": "run.started", "level": "info", "run_id": "r1", "timestamp": "t"},
            {"event": "step.completed", "level": "debug", "run_id": "r1", "timestamp": "t"},
        ]
        self.tail_done = asyncio.Event()
        self.wait_entered = asyncio.Event()
        self.watch_closed = asyncio.Event()
        self.stream_chunks: list[dict[str, Any]] = [
            {"stream_id": "s", "seq": 0, "encoding": "text", "chunk": "hel", "final": False},
            {"stream_id": "s", "seq": 1, "encoding": "text", "chunk": "lo", "final": True},
        ]

    def _record(self, name: str, **kw: Any) -> None:
        self.calls.append((name, kw))

    def _run(self, run_id: str) -> dict[str, Any]:
        if run_id == "crash":
            raise RuntimeError("handler exploded")
        try:
            return self.runs[run_id]
        except KeyError:
            raise errors.NotFound("run", run_id) from None

    def _set_status(self, run: dict[str, Any], status: str, **fields: Any) -> None:
        run.update(status=status, **fields)
        if status in TERMINAL:
            run["finished_at"] = "2026-01-01T00:00:01+00:00"
        self._changed.setdefault(run["run_id"], asyncio.Event()).set()
        self._changed[run["run_id"]] = asyncio.Event()

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
    ) -> dict[str, Any]:
        self._record(
            "submit",
            workflow_id=workflow_id,
            input=input,
            run_id=run_id,
            idempotency_key=idempotency_key,
            tags=tags,
            delay=delay,
            priority=priority,
        )
        if workflow_id not in WORKFLOWS:
            raise errors.NotFound("workflow", workflow_id)
        if workflow_id == "strict" and not (isinstance(input, dict) and "x" in input):
            raise errors.ValidationFailed(workflow_id, "'x' is required")
        if run_id is not None and run_id in self.runs:
            return self.runs[run_id]
        self._n += 1
        run_id = run_id or f"run-{self._n}"
        run: dict[str, Any] = {
            "run_id": run_id,
            "workflow_id": workflow_id,
            "status": "running",
            "input": input,
            "output": None,
            "error": None,
            "tags": list(tags),
            "created_at": "2026-01-01T00:00:00+00:00",
            "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": None,
            "parent_run_id": None,
        }
        self.runs[run_id] = run
        self._changed[run_id] = asyncio.Event()
        if workflow_id in ("ok", "strict"):
            self._set_status(run, "completed", output={"echo": input})
        elif workflow_id == "fail":
            self._set_status(run, "failed", error={"code": "FATAL", "message": "it broke"})
        return run

    async def get(self, run_id: str) -> dict[str, Any]:
        run = self._run(run_id)
        return {
            **run,
            "steps": [
                {
                    "step_id": "fetch",
                    "status": "completed",
                    "attempt": 1,
                    "started_at": "2026-01-01T00:00:00+00:00",
                    "finished_at": "2026-01-01T00:00:00.250000+00:00",
                }
            ],
            "waitpoints": [{"waitpoint_id": "sleep:0", "kind": "DATETIME", "status": "pending"}],
            "metadata": {"progress": 50},
        }

    async def list(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        runs = [
            r
            for r in self.runs.values()
            if (status is None or r["status"] == status)
            and (workflow_id is None or r["workflow_id"] == workflow_id)
            and (tag is None or tag in r["tags"])
        ]
        return {"runs": runs[:limit]}

    async def wait(self, run_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        self._record("wait", run_id=run_id, timeout=timeout)
        run = self._run(run_id)
        self.wait_entered.set()
        while run["status"] not in TERMINAL:
            changed = self._changed[run_id]
            if timeout is not None:
                try:
                    await asyncio.wait_for(changed.wait(), timeout)
                except TimeoutError:
                    break
            else:
                await changed.wait()
        return run

    async def cancel(
        self, run_id: str, *, compensate: bool = True, reason: str | None = None
    ) -> dict[str, Any]:
        self._record("cancel", run_id=run_id, compensate=compensate, reason=reason)
        run = self._run(run_id)
        if run["status"] in TERMINAL:
            raise errors.RunNotActive(run_id, run["status"], "cancel")
        self._set_status(run, "cancelled")
        return run

    async def pause(self, run_id: str) -> dict[str, Any]:
        run = self._run(run_id)
        if run["status"] in TERMINAL:
            raise errors.RunNotActive(run_id, run["status"], "pause")
        self._set_status(run, "paused")
        return run

    async def resume(self, run_id: str) -> dict[str, Any]:
        run = self._run(run_id)
        if run["status"] != "paused":
            raise errors.RunNotActive(run_id, run["status"], "resume")
        self._set_status(run, "running")
        return run

    async def retry(self, run_id: str, *, mode: str = "resume") -> dict[str, Any]:
        self._record("retry", run_id=run_id, mode=mode)
        run = self._run(run_id)
        if run["status"] not in TERMINAL or run["status"] == "completed":
            raise errors.RunNotActive(run_id, run["status"], "retry")
        self._set_status(run, "running", error=None, finished_at=None)
        return run

    async def replay(self, run_id: str) -> dict[str, Any]:
        self._run(run_id)
        return {"diverged": False, "detail": None}

    async def send_event(
        self, type: str, payload: Any, *, event_id: str | None = None
    ) -> dict[str, Any]:
        event_id = event_id or f"evt-{len(self.events) + 1}"
        self.events[event_id] = {"type": type, "payload": payload}
        return {"event_id": event_id, "resolved": 0}

    async def signal(self, run_id: str, name: str, payload: Any) -> dict[str, Any]:
        run = self._run(run_id)
        if run["status"] in TERMINAL:
            raise errors.RunNotActive(run_id, run["status"], "signal")
        if name == "finish":
            self._set_status(run, "completed", output=payload)
            return {"delivered": True}
        return {"delivered": False}

    async def complete_token(self, token_id: str, payload: Any) -> dict[str, Any]:
        if token_id in self.tokens:
            raise errors.TokenConflict(token_id)
        self.tokens.add(token_id)
        return {"run_id": "run-1"}

    async def workflows(self) -> dict[str, Any]:
        return {"workflows": [{"id": w, "version": "v1"} for w in WORKFLOWS]}

    async def schedules(self) -> dict[str, Any]:
        return {"schedules": [{"workflow_id": "ok", "cron": "* * * * *", "next": "soon"}]}

    async def stats(self) -> dict[str, Any]:
        return {"runs": {"active": len(self.runs)}, "server": {"connections_open": 1}}

    async def tail(
        self,
        *,
        run_id: str | None = None,
        workflow_id: str | None = None,
        level: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        levels = ("debug", "info", "warning", "error")
        floor = levels.index(level) if level else 0
        for record in self.tail_records:
            if levels.index(record.get("level", "info")) < floor:
                continue
            if run_id is not None and record.get("run_id") != run_id:
                continue
            yield record
        self.tail_done.set()

    async def watch(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        run = self._run(run_id)
        try:
            yield {"run_id": run_id, "status": run["status"]}
            while run["status"] not in TERMINAL:
                await self._changed[run_id].wait()
                yield {"run_id": run_id, "status": run["status"]}
        finally:
            self.watch_closed.set()

    async def stream(
        self, run_id: str, stream_id: str, *, follow: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        self._run(run_id)
        if stream_id != "s":
            raise errors.NotFound("stream", stream_id)
        for chunk in self.stream_chunks:
            yield {**chunk, "at": "2026-01-01T00:00:00+00:00"}
