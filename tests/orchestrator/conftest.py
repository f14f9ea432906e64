"""The engine tier's fixtures: a real :class:`Engine` over ``SQLiteStorage`` on a file in
``tmp_path``, with the private workflows of :mod:`tests.orchestrator.engine_workflows`, and the
wire tests' in-process :class:`SocketServer` in front of it. Storage is never mocked; a test that
needs storage to fail arms a one-shot fault on :class:`FaultyStorage`, which otherwise passes
every call through to the real storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import structlog

import storage
from orchestrator import logs
from orchestrator.config import LoggingConfig
from orchestrator.daemon.server import SocketServer
from orchestrator.engine.engine import Engine
from orchestrator.engine.settings import Settings
from runtime.workflow import Registry
from tests import pg
from tests.orchestrator import engine_workflows

# Shutdown waits this long for a step in flight (a gated step never ends by itself).
GRACE = 0.2


@dataclass
class _Fault:
    method: str
    exc: BaseException
    when: Callable[..., bool]
    times: int


class FaultyStorage:
    """The real storage, with faults a test arms: the next ``times`` calls of ``method`` that
    ``when(*args, **kwargs)`` accepts raise ``exc`` and never reach storage."""

    def __init__(self, inner: storage.Storage) -> None:
        self.inner = inner
        self._faults: list[_Fault] = []

    def fail(
        self,
        method: str,
        exc: BaseException,
        *,
        when: Callable[..., bool] = lambda *a, **k: True,
        times: int = 1,
    ) -> None:
        assert callable(getattr(self.inner, method)), method
        self._faults.append(_Fault(method, exc, when, times))

    @property
    def armed(self) -> int:
        """Faults not yet raised."""
        return sum(f.times for f in self._faults)

    @property
    def failed(self) -> asyncio.Future[BaseException]:
        return self.inner.failed

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            for fault in self._faults:
                if fault.method == name and fault.times > 0 and fault.when(*args, **kwargs):
                    fault.times -= 1
                    raise fault.exc
            return await attr(*args, **kwargs)

        return call


@pytest.fixture(autouse=True)
def _fresh_workflow_state() -> Iterator[None]:
    engine_workflows.reset()
    yield
    engine_workflows.reset()




def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Tests marked `both_backends` run their engine over SQLite and over PostgreSQL.
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_backends"
    ):
        metafunc.parametrize("backend", ["sqlite", "postgres"])


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def db_path(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Where the test's database lives: a SQLite file, or (``both_backends`` tests on
    PostgreSQL) the URL of a fresh database; ``open_engine`` and ``store`` take either."""
    if backend != "postgres":
        yield tmp_path / "wf.db"
        return
    cluster = request.getfixturevalue("pg_cluster")
    url = pg.run_sync(pg.create_database(cluster))
    try:
        yield url
    finally:
        pg.run_sync(pg.drop_database(cluster, url))


def open_storage(location: Path | str) -> contextlib.AbstractAsyncContextManager[Any]:
    if isinstance(location, str):
        return storage.PostgresStorage.open(location)
    return storage.SQLiteStorage.open(location)


@pytest.fixture
async def store(db_path: Path | str) -> AsyncIterator[FaultyStorage]:
    async with open_storage(db_path) as opened:
        yield FaultyStorage(opened)


@pytest.fixture
def settings() -> Settings:
    return Settings(shutdown_grace=GRACE)


@pytest.fixture
async def engine(store: FaultyStorage, settings: Settings) -> AsyncIterator[Engine]:
    registry = engine_workflows.registry()
    async with Engine(cast(storage.Storage, store), registry=registry, settings=settings) as eng:
        yield eng


@contextlib.asynccontextmanager
async def open_engine(
    db_path: Path, settings: Settings | None = None, registry: Registry | None = None
) -> AsyncIterator[Engine]:
    """Storage and engine opened on ``db_path`` together and closed together: one daemon life."""
    async with open_storage(db_path) as opened, Engine(
        opened,
        registry=registry or engine_workflows.registry(),
        settings=settings or Settings(shutdown_grace=GRACE),
    ) as eng:
        yield eng


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # Not under tmp_path: a long test name would push the path past sun_path's 107 bytes.
    where = Path(tempfile.mkdtemp(prefix="wf-", dir="/tmp"))
    try:
        yield where / "wf.sock"
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
async def server(engine: Engine, sock_path: Path) -> AsyncIterator[SocketServer]:
    srv = SocketServer(engine, sock_path, max_request_bytes=4096, stream_queue_size=4)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
def log_feed() -> Iterator[io.StringIO]:
    """The daemon's logging (debug and up, into a buffer) with its fan-out to ``tail``."""
    sink = io.StringIO()
    logs.configure_logging(LoggingConfig(level="debug"), sink=sink,
                           cache_logger_on_first_use=False)
    yield sink
    structlog.reset_defaults()
    for sub in list(logs._subscribers):
        sub.close()


async def until(check: Callable[[], bool | Awaitable[bool]], what: str,
                timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds (it is asked once per loop turn, then every few ms)."""
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.0
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(delay)
        delay = 0.005


async def reach(engine: Engine, run_id: str, *statuses: str) -> dict[str, Any]:
    """The run's record once its status is one of ``statuses`` (followed with ``watch``)."""
    last = None
    watch = cast(AsyncGenerator[dict[str, Any], None], engine.watch(run_id))
    async with contextlib.aclosing(watch) as changes:
        async for run in changes:
            if run["status"] in statuses:
                return run
            last = run["status"]
    pytest.fail(f"run {run_id} ended {last}, never reached {statuses}")


class Raw:
    """A bare NDJSON connection, to send exactly the bytes a test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: Path, limit: int = 2**24) -> Raw:
        """``limit``: the reader stops taking data off the socket past twice this."""
        reader, writer = await asyncio.open_unix_connection(str(path), limit=limit)
        return cls(reader, writer)

    async def send(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = orjson.dumps(data) + b"\n"
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> dict[str, Any]:
        line = await self.reader.readline()
        assert line, "connection closed"
        return orjson.loads(line)  # type: ignore[no-any-return]

    async def ask(self, data: bytes | dict[str, Any]) -> dict[str, Any]:
        await self.send(data)
        return await self.recv()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):  # the server may have closed first
            await self.writer.wait_closed()


@pytest.fixture
async def raw(server: SocketServer) -> AsyncIterator[Raw]:
    conn = await Raw.open(server.path)
    try:
        yield conn
    finally:
        await conn.close()
