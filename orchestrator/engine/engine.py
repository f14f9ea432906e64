"""The embedded engine: ``async with Orchestrator(config) as orch`` runs workflows in-process.

It implements :class:`orchestrator.service.Service`, so the socket server (the daemon) and an
application embedding the engine use the very same code. Start-up order: take the database
lock, open storage (migrations), import workflow modules, recover every non-terminal run, fire
overdue timers oldest first, arm the scheduler. Everything acknowledged is committed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import Any

import orjson
import structlog

import storage
from orchestrator import logs
from orchestrator.api import errors
from orchestrator.config import Config
from orchestrator.daemon.loader import import_workflow_modules
from orchestrator.daemon.lockfile import DatabaseLock
from orchestrator.daemon.processes import PoolRunner
from orchestrator.engine import bridge as entries
from orchestrator.engine import replay
from orchestrator.engine.actor import Resolve
from orchestrator.engine.supervisor import Supervisor
from orchestrator.engine.timers import Scheduler
from runtime import matching
from runtime.clock import Clock, SystemClock
from runtime.facts import Limits
from runtime.ratelimit import TokenBucketLimiter
from runtime.workflow import REGISTRY, Registry
from storage.faults import crash_point, mutant

log = structlog.get_logger("wf")

JSONDict = dict[str, Any]


def new_run_id() -> str:
    """Time-ordered and unique: milliseconds since the epoch, then 40 random bits."""
    return f"run_{int(time.time() * 1000):011x}{secrets.token_hex(5)}"


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Translate storage errors into the service's wire errors at one boundary."""
    try:
        yield
    except storage.StorageFull as exc:
        raise errors.StorageFull(str(exc)) from exc
    except storage.TokenConflict as exc:
        raise errors.TokenConflict(getattr(exc, "token_id", "") or str(exc)) from exc


class Orchestrator:
    """The engine. Use as an async context manager; every Service method is a coroutine."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        registry: Registry | None = None,
        import_modules: bool = True,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.registry = registry or REGISTRY
        self._import_modules = import_modules
        self._stack = AsyncExitStack()
        self._finish_waiters: dict[str, list[asyncio.Future[storage.RunRecord]]] = {}
        self._mutant_tasks: set[asyncio.Future[None]] = set()
        self._accepting = False
        self._fatal: asyncio.Future[BaseException] | None = None
        self.storage: storage.Storage
        self.supervisor: Supervisor
        self.scheduler: Scheduler

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Orchestrator:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._fatal = loop.create_future()
        self._stack.enter_context(DatabaseLock.acquire(cfg.storage.path))
        self.storage = await self._stack.enter_async_context(
            storage.SQLiteStorage.open(cfg.storage.path, synchronous=cfg.storage.synchronous)
        )
        self.storage.failed.add_done_callback(lambda fut: self._on_fatal(fut.result()))
        if self._import_modules:
            import_workflow_modules(cfg.workflows.paths, cfg.workflows.modules)
        pool = ThreadPoolExecutor(cfg.runtime.step_threads, thread_name_prefix="wf-step")
        self._stack.callback(pool.shutdown, wait=False, cancel_futures=True)
        runner = None
        if cfg.runtime.process_workers > 0:
            runner = PoolRunner(cfg.runtime.process_workers)
            self._stack.callback(runner.shutdown)
        self.supervisor = Supervisor(
            storage_=self.storage,
            registry=self.registry,
            clock=self.clock,
            max_active_runs=cfg.daemon.max_active_runs,
            warm_runs=cfg.daemon.warm_runs,
            limits=Limits(cfg.limits.max_payload_bytes, cfg.limits.max_journal_entries),
            rate_limiter=TokenBucketLimiter(self.clock),
            thread_pool=pool,
            process_runner=runner,
            on_finished=self._on_finished,
            on_fatal=self._on_fatal,
        )
        self.scheduler = Scheduler(
            self.storage, self.clock, self.supervisor.deliver, self._on_fatal
        )
        self.supervisor.scheduler = self.scheduler
        recovered = await self._recover()
        fired = 0
        if not mutant("SKIP_TIMER_ARM_ON_START"):
            fired = await self.scheduler.fire_due()
            self.scheduler.start()
        crash_point("timers.armed")
        self._accepting = True
        log.info("orchestrator.started", recovered=recovered, timers_fired=fired)

    async def _recover(self) -> int:
        """Restart every run that was moving when the daemon stopped."""
        now = self.clock.now()
        limit = self.config.daemon.max_recoveries
        runs = await self.storage.non_terminal_runs()
        ops: list[storage.WriteOp[Any]] = []
        to_start: list[tuple[storage.RunRecord, bool]] = []  # (run, already started)
        for run in runs:
            # A run still "pending" may have started and crashed before its first commit (its
            # "running" rides on that commit), so it counts recoveries like a running one.
            # A delayed run whose start time has passed may have lost its timer to a crash
            # after the timer fired: start it too (a second delivery is harmless).
            restartable = run.status is storage.RunStatus.RUNNING or (
                run.status is storage.RunStatus.PENDING
                and (run.scheduled_at is None or run.scheduled_at <= now)
            )
            if restartable:
                if run.recoveries >= limit:
                    error = {
                        "code": "RECOVERY_LIMIT",
                        "message": f"run was recovered {run.recoveries} times without "
                        f"progress (daemon.max_recoveries={limit})",
                    }
                    ops.append(storage.UpdateRun(run.run_id, at=now,
                                                 status=storage.RunStatus.FAILED,
                                                 error=error, finished_at=now))
                    log.error("run.failed", run_id=run.run_id, workflow_id=run.workflow_id,
                              error_code="RECOVERY_LIMIT")
                    continue
                ops.append(storage.UpdateRun(run.run_id, at=now, recoveries=run.recoveries + 1))
                to_start.append((run, run.status is storage.RunStatus.RUNNING))
            elif run.status is storage.RunStatus.WAITING and run.needs_resume:
                to_start.append((run, True))
        if ops:
            await self.storage.commit(ops)
        for run, resuming in to_start:
            self.supervisor.deliver(run.run_id, resuming=resuming, priority=run.priority)
            crash_point("recovery.scan")
        return len(to_start)

    async def close(self) -> None:
        self._accepting = False
        if hasattr(self, "supervisor"):
            await self.scheduler.stop()
            await self.supervisor.shutdown(self.config.daemon.shutdown_grace)
        for waiters in self._finish_waiters.values():
            for fut in waiters:
                fut.cancel()
        await self._stack.aclose()

    @property
    def fatal(self) -> asyncio.Future[BaseException]:
        """Resolves with the error when the engine must stop (an I/O error on commit)."""
        assert self._fatal is not None
        return self._fatal

    def _on_fatal(self, exc: BaseException) -> None:
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_result(exc)

    def _on_finished(self, run: storage.RunRecord) -> None:
        for fut in self._finish_waiters.pop(run.run_id, ()):
            if not fut.done():
                fut.set_result(run)

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise errors.ShuttingDown()

    def _check_size(self, field: str, value: Any) -> None:
        limit = self.config.limits.max_payload_bytes
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError as exc:  # e.g. nested deeper than JSON encoding allows
            raise errors.InvalidParams(
                field, "a JSON value nested at most 254 levels deep", str(exc)
            ) from exc
        if size > limit:
            raise errors.InvalidParams(
                field, f"JSON of at most {limit} bytes (limits.max_payload_bytes)", f"{size} bytes"
            )

    # ------------------------------------------------------------------ runs

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
        self._check_accepting()
        definition = self.registry.get(workflow_id)
        if definition is None:
            raise errors.NotFound("workflow", workflow_id)
        if definition.input_validator is not None:
            try:
                input = definition.input_validator(input)
            except Exception as exc:
                raise errors.ValidationFailed(workflow_id, str(exc) or type(exc).__name__) from exc
        self._check_size("input", input)
        now = self.clock.now()
        op = storage.CreateRun(
            run_id=run_id or new_run_id(),
            workflow_id=workflow_id,
            created_at=now,
            input=input,
            workflow_version=definition.version,
            tags=tuple(tags) or definition.tags,
            priority=priority,
            idempotency_key=idempotency_key,
            scheduled_at=now + delay if delay else None,
            triggered_by="api",
        )
        if mutant("ACK_BEFORE_COMMIT"):
            return await self._ack_before_commit(op)
        with storage_errors():
            created = await self.storage.create_run(op)
        run = created.run
        if created.created:
            log.info("run.submitted", run_id=run.run_id, workflow_id=workflow_id,
                     delay=delay or None)
            if op.scheduled_at is None:
                self.supervisor.deliver(run.run_id, known=run)
            else:
                self.scheduler.notify(op.scheduled_at)
        return run.to_json()

    async def _ack_before_commit(self, op: storage.CreateRun) -> JSONDict:
        """The ACK_BEFORE_COMMIT mutant: reply while the commit is still on its way."""

        async def commit_then_start() -> None:
            created = await self.storage.create_run(op)
            self.supervisor.deliver(op.run_id, known=created.run)

        task = asyncio.ensure_future(commit_then_start())
        self._mutant_tasks.add(task)
        task.add_done_callback(self._mutant_tasks.discard)
        return {"run_id": op.run_id, "workflow_id": op.workflow_id, "status": "pending"}

    async def _run_or_404(self, run_id: str) -> storage.RunRecord:
        run = await self.storage.get_run(run_id)
        if run is None:
            raise errors.NotFound("run", run_id)
        return run

    async def get(self, run_id: str) -> JSONDict:
        try:
            journal = await self.storage.load_journal(run_id)
        except storage.NotFound as exc:
            raise errors.NotFound("run", run_id) from exc
        attempts: dict[str, list[storage.StepAttemptRecord]] = {}
        for attempt in journal.attempts:
            attempts.setdefault(attempt.step_id, []).append(attempt)
        out = journal.run.to_json()
        out["steps"] = [entries.step_json(s, attempts.get(s.step_id, [])) for s in journal.steps]
        out["waitpoints"] = [entries.waitpoint_json(w) for w in journal.waitpoints]
        out["metadata"] = dict(journal.metadata)
        out["compensations"] = [
            {"step_id": c.step_id, "status": str(c.status), "error": c.error,
             "finished_at": c.finished_at}
            for c in journal.compensations
        ]
        return out

    async def list(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> JSONDict:
        runs = await self.storage.list_runs(
            status=storage.RunStatus(status) if status else None,
            workflow_id=workflow_id,
            tag=tag,
            limit=limit,
        )
        return {"runs": [r.to_json() for r in runs]}

    async def wait(self, run_id: str, *, timeout: float | None = None) -> JSONDict:
        fut: asyncio.Future[storage.RunRecord] = asyncio.get_running_loop().create_future()
        self._finish_waiters.setdefault(run_id, []).append(fut)
        try:
            # A run the supervisor holds live is not over and will announce its end: no read
            # (10k clients waiting at once would otherwise queue 10k reads).
            if self.supervisor.is_live(run_id) or not (
                run := await self._run_or_404(run_id)
            ).is_terminal:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), timeout)
                # The final record comes with the notification: no second read.
                run = fut.result() if fut.done() else await self._run_or_404(run_id)
            return run.to_json()
        finally:
            waiters = self._finish_waiters.get(run_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._finish_waiters[run_id]

    async def cancel(
        self, run_id: str, *, compensate: bool = True, reason: str | None = None
    ) -> JSONDict:
        self._check_accepting()
        run = await self._run_or_404(run_id)
        if run.is_terminal:
            raise errors.RunNotActive(run_id, str(run.status), "cancel")
        await self.supervisor.cancel_run(run_id, reason, compensate)
        return await self.wait(run_id, timeout=self.config.daemon.shutdown_grace)

    async def pause(self, run_id: str) -> JSONDict:
        raise errors.MethodNotFound("pause (not available in this version)")

    async def resume(self, run_id: str) -> JSONDict:
        raise errors.MethodNotFound("resume (not available in this version)")

    async def retry(self, run_id: str, *, mode: str = "resume") -> JSONDict:
        raise errors.MethodNotFound("retry (not available in this version)")

    async def replay(self, run_id: str) -> JSONDict:
        run = await self._run_or_404(run_id)
        definition = self.registry.get(run.workflow_id)
        if definition is None:
            raise errors.NotFound("workflow", run.workflow_id)
        record = await self.storage.load_journal(run_id)
        return await replay.check(definition, record)

    # ------------------------------------------------------------------ resolutions

    async def send_event(
        self, type: str, payload: Any, *, event_id: str | None = None
    ) -> JSONDict:
        self._check_accepting()
        self._check_size("payload", payload)
        op = storage.RecordEvent(
            event_id=event_id or f"evt_{secrets.token_hex(8)}",
            type=type,
            payload=payload,
            received_at=self.clock.now(),
            matches=matching.matches,
        )
        with storage_errors():
            result = await self.storage.record_event(op)
        crash_point("event.committed")
        for wp in result.resolved:
            self.supervisor.deliver(wp.run_id, Resolve(entries.resolution(wp)))
        log.info("event.received", event_type=type, event_id=op.event_id,
                 resolved=len(result.resolved), duplicate=not result.inserted)
        return {"event_id": op.event_id, "resolved": len(result.resolved)}

    async def signal(self, run_id: str, name: str, payload: Any) -> JSONDict:
        self._check_accepting()
        self._check_size("payload", payload)
        run = await self._run_or_404(run_id)
        if run.is_terminal:
            raise errors.RunNotActive(run_id, str(run.status), "signal")
        with storage_errors():
            sent = await self.storage.send_signal(
                storage.SendSignal(run_id, name, payload, self.clock.now())
            )
        if sent.waitpoint is not None:
            self.supervisor.deliver(run_id, Resolve(entries.resolution(sent.waitpoint)))
        return {"delivered": sent.delivered}

    async def complete_token(self, token_id: str, payload: Any) -> JSONDict:
        self._check_accepting()
        self._check_size("payload", payload)
        try:
            with storage_errors():
                wp = await self.storage.complete_token(
                    storage.CompleteToken(token_id, payload, self.clock.now())
                )
        except storage.NotFound as exc:
            raise errors.NotFound("token", token_id) from exc
        self.supervisor.deliver(wp.run_id, Resolve(entries.resolution(wp)))
        return {"run_id": wp.run_id}

    # ------------------------------------------------------------------ introspection

    async def workflows(self) -> JSONDict:
        return {
            "workflows": [
                {"id": d.id, "version": d.version, "description": d.description,
                 "tags": list(d.tags), "timeout": d.timeout, "origin": d.origin}
                for d in sorted(self.registry, key=lambda d: d.id)
            ]
        }

    async def schedules(self) -> JSONDict:
        return {
            "schedules": [
                {"name": s.name, "workflow_id": s.workflow_id, "spec": s.spec,
                 "next_fire_at": s.next_fire_at, "last_fire_at": s.last_fire_at}
                for s in await self.storage.list_schedules()
            ]
        }

    async def stats(self) -> JSONDict:
        counts = await self.storage.counts()
        return {
            "runs": dict(counts.runs_by_status),
            "waiting_waitpoints": counts.waiting_waitpoints,
            "timers": counts.timers,
            "events": counts.events,
            "inbox_signals": counts.inbox_signals,
            "actors": self.supervisor.stats().to_dict(),
            "scheduler": self.scheduler.stats().to_dict(),
        }

    async def tail(
        self,
        *,
        run_id: str | None = None,
        workflow_id: str | None = None,
        level: str | None = None,
    ) -> AsyncIterator[JSONDict]:
        floor = logs.LEVELS.get(level, 0) if level else 0
        with logs.subscribe(maxsize=1000) as sub:
            async for record in sub:
                if record.get("type") == "lagged":
                    yield record
                    continue
                if run_id is not None and record.get("run_id") != run_id:
                    continue
                if workflow_id is not None and record.get("workflow_id") != workflow_id:
                    continue
                if floor and logs.LEVELS.get(str(record.get("level", "info")), 20) < floor:
                    continue
                yield record

    async def watch(self, run_id: str) -> AsyncIterator[JSONDict]:
        queue = self.supervisor.listen_state(run_id)
        try:
            run = await self._run_or_404(run_id)
            yield run.to_json()
            while not run.is_terminal:
                await queue.get()
                run = await self._run_or_404(run_id)
                yield run.to_json()
        finally:
            self.supervisor.unlisten_state(run_id, queue)

    async def stream(
        self, run_id: str, stream_id: str, *, follow: bool = False
    ) -> AsyncIterator[JSONDict]:
        await self._run_or_404(run_id)
        queue = self.supervisor.streams.follow(run_id, stream_id) if follow else None
        try:
            next_seq = 0
            final = False
            for chunk in await self.storage.stream_chunks(run_id, stream_id):
                yield chunk.to_json()
                next_seq = chunk.seq + 1
                final = chunk.final
            if queue is None or final:
                return
            while True:
                item = await queue.get()
                if item["seq"] < next_seq:
                    continue
                next_seq = item["seq"] + 1
                yield item
                if item["final"]:
                    return
        finally:
            if queue is not None:
                self.supervisor.streams.unfollow(run_id, stream_id, queue)
