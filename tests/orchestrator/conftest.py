from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.daemon.server import SocketServer
from tests.orchestrator.fake_service import FakeService


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "wf.sock"


@pytest.fixture
async def server(service: FakeService, sock_path: Path) -> AsyncIterator[SocketServer]:
    srv = SocketServer(service, sock_path, max_request_bytes=4096, stream_queue_size=4)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


class Raw:
    """A bare NDJSON connection, to send exactly the bytes a test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: Path) -> Raw:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=2**24)
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
