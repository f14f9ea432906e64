"""The composition root: from a config to a running engine.

Here, and only here, the configured pieces are opened: the database lock, the storage backend
(migrations included), the workflow modules, the thread and process pools. The engine receives
them (``orchestrator.engine.engine.Engine``) and opens nothing itself.

``Orchestrator(config)`` is the SPEC's embedding form: an async context manager that composes
an engine from a config and offers every service method in process, no socket needed::

    async with Orchestrator(load_config("config.toml")) as orch:
        run = await orch.submit("send-reminder", {"booking_id": 1})
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

import storage
from orchestrator import logs
from orchestrator.api import service
from orchestrator.api.service import JSONDict
from orchestrator.config import Config
from orchestrator.daemon.loader import import_workflow_modules
from orchestrator.daemon.lockfile import DatabaseLock
from orchestrator.daemon.processes import PoolRunner
from orchestrator.engine.engine import Engine
from orchestrator.engine.lease import Identity, LeaseKeeper
from orchestrator.engine.ports import RunTracing
from orchestrator.engine.settings import Settings
from orchestrator.engine.supervisor import Supervisor
from runtime.clock import Clock, SystemClock
from runtime.workflow import REGISTRY, Registry
from storage.instruments import NO_INSTRUMENT, Instrument

R = TypeVar("R")

StorageWrapper = Callable[[storage.Storage], storage.Storage]
"""Wraps the opened storage before the engine gets it (the test launcher's mutants)."""


@dataclass(frozen=True, slots=True)
class Hooks:
    """What a test launcher may install into a daemon (``tests/harness/launch.py``): an
    instrument (crash points) and a storage wrapper (mutants). Production uses none."""

    instrument: Instrument = NO_INSTRUMENT
    wrap_storage: StorageWrapper | None = None
    adjust_config: Callable[[Config], Config] | None = None


def package_version() -> str:
    try:
        return metadata.version("wf-engine")
    except metadata.PackageNotFoundError:
        return "unknown"


class Orchestrator(service.ServiceMethods):
    """An engine composed from a config, with everything it opened; every service method is a
    coroutine (``submit``, ``get``, ``send_event``, ...), as on the socket client."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        registry: Registry | None = None,
        import_modules: bool = True,
        configure_logging: bool = True,
        instrument: Instrument = NO_INSTRUMENT,
        wrap_storage: StorageWrapper | None = None,
        tracing: RunTracing | None = None,
    ) -> None:
        self.config = config
        self._configure_logging = configure_logging
        self.clock: Clock = clock or SystemClock()
        self.registry = registry or REGISTRY
        self._import_modules = import_modules
        self._instrument = instrument
        self._wrap_storage = wrap_storage
        self._tracing = tracing  # a test's own (in-memory exporter); else from [telemetry]
        self._stack = AsyncExitStack()
        self._engine: Engine | None = None

    @classmethod
    def open(cls, config: Config, **options: Any) -> Orchestrator:
        """``async with Orchestrator.open(config) as orch``: the one-line embedding."""
        return cls(config, **options)

    async def __aenter__(self) -> Orchestrator:
        try:
            await self._compose()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _compose(self) -> None:
        cfg = self.config
        if self._configure_logging:
            # Embedded or daemon, `[logging]` says what is logged where (an application with
            # a structlog setup of its own passes configure_logging=False). Loggers are not
            # cached, so a host that reconfigures structlog later is obeyed.
            logs.configure_logging(cfg.logging, cache_logger_on_first_use=False)
        store: storage.Storage = await self._open_storage()
        if self._wrap_storage is not None:
            store = self._wrap_storage(store)
        if self._import_modules:
            import_workflow_modules(cfg.workflows.paths, cfg.workflows.modules)
        pool = ThreadPoolExecutor(cfg.runtime.step_threads, thread_name_prefix="wf-step")
        self._stack.callback(pool.shutdown, wait=False, cancel_futures=True)
        runner = None
        if cfg.runtime.process_workers > 0:
            runner = PoolRunner(cfg.runtime.process_workers)
            self._stack.callback(runner.shutdown)
        engine = Engine(
            store,
            registry=self.registry,
            settings=Settings.from_config(cfg),
            clock=self.clock,
            thread_pool=pool,
            process_runner=runner,
            instrument=self._instrument,
        )
        tracing = self._tracing
        if tracing is None and cfg.telemetry.enabled:
            from orchestrator.engine import otel  # the `otel` extra (checked by the config)

            t = cfg.telemetry
            tracing = otel.from_config(store, t.otlp_endpoint, t.console, t.service_name)
        if tracing is not None:
            self._stack.push_async_callback(tracing.close)  # after the engine closed: flush
            engine.supervisor.tracing = tracing
        # Registered before recovery writes anything, so those writes are fenced too; retired
        # after the engine stopped its actors (the exit stack unwinds last in, first out).
        keeper = LeaseKeeper(
            store,
            Identity.of_this_process(cfg.daemon.id, version=package_version(),
                                     socket_path=str(cfg.daemon.socket)),
            cfg.daemon.lease,
            on_lost=engine.fail,
        )
        await keeper.start()
        self._stack.push_async_callback(keeper.close)
        engine.lease = keeper
        self._stack.push_async_callback(engine.close)
        await engine.start()
        self._engine = engine

    async def _open_storage(self) -> storage.Storage:
        """The backend the config names: PostgreSQL at ``storage.url``, else the SQLite file at
        ``storage.path``. Past this point nothing asks which one it is (``capabilities()``)."""
        cfg = self.config.storage
        if cfg.url:
            if cfg.synchronous != "full":
                raise ValueError(
                    "storage.synchronous applies to SQLite only; with storage.url set, "
                    "durability is PostgreSQL's synchronous_commit (leave it 'on')"
                )
            # Many daemons may share it (SPEC §13): leases and fencing instead of a lock.
            return await self._stack.enter_async_context(
                storage.PostgresStorage.open(cfg.url, exclusive=False))
        self._stack.enter_context(DatabaseLock.acquire(cfg.path))
        return await self._stack.enter_async_context(
            storage.SQLiteStorage.open(
                cfg.path, synchronous=cfg.synchronous, instrument=self._instrument
            )
        )

    async def close(self) -> None:
        self._engine = None
        await self._stack.aclose()

    # ------------------------------------------------------------------ what it composed

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the orchestrator is not open (use `async with`)")
        return self._engine

    @property
    def storage(self) -> storage.Storage:
        return self.engine.storage

    @property
    def supervisor(self) -> Supervisor:
        return self.engine.supervisor

    @property
    def fatal(self) -> asyncio.Future[BaseException]:
        return self.engine.fatal

    # ------------------------------------------------------------------ the service

    async def call(self, request: service.Request[R]) -> R:
        return await self.engine.call(request)

    async def dispatch(self, request: service.Request[R]) -> R:
        return await self.engine.dispatch(request)

    def open_stream(self, request: service.StreamRequest) -> AsyncIterator[JSONDict]:
        return self.engine.open_stream(request)
