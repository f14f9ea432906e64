"""Error paths over a raw NDJSON connection to the real daemon (SPEC §6)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.client import Client, RemoteError
from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.slow


class Raw:
    """A bare connection, to send exactly the bytes a test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = orjson.dumps(data) + b"\n"
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 10)
        assert line, "connection closed"
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    async def ask(self, data: bytes | dict[str, Any]) -> dict[str, Any]:
        await self.send(data)
        return await self.recv()

    async def call(self, method: str, params: dict[str, Any], id: int = 1) -> dict[str, Any]:
        return await self.ask({"id": id, "method": method, "params": params})


async def _open(path: Path) -> Raw:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=2**24)
    return Raw(reader, writer)


@pytest.fixture
async def raw(shared_daemon: Daemon) -> AsyncIterator[Raw]:
    """A connection to the module's daemon: these tests create no runs."""
    conn = await _open(shared_daemon.socket)
    yield conn
    conn.writer.close()


async def test_bad_json_is_a_parse_error_and_the_connection_keeps_working(raw: Raw) -> None:
    reply = await raw.ask(b"{not json\n")
    assert reply["id"] is None
    assert reply["error"]["code"] == "PARSE_ERROR"
    reply = await raw.call("workflows", {}, id=7)
    assert reply["id"] == 7
    assert "workflows" in reply["result"]


async def test_unknown_method(raw: Raw) -> None:
    reply = await raw.call("frobnicate", {}, id=2)
    assert reply == {
        "id": 2,
        "error": {
            "code": "METHOD_NOT_FOUND",
            "message": reply["error"]["message"],
            "data": {"method": "frobnicate"},
        },
    }
    assert "frobnicate" in reply["error"]["message"]


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("submit", {"input": {}}, "workflow_id"),
        ("submit", {"workflow_id": "e2e-echo"}, "input"),
        ("get", {}, "run_id"),
        ("send_event", {"payload": 1}, "type"),
        ("signal", {"run_id": "r", "payload": 1}, "name"),
        ("complete_token", {"token_id": "t"}, "payload"),
    ],
)
async def test_missing_field_is_invalid_params_naming_it(
    raw: Raw, method: str, params: dict[str, Any], field: str
) -> None:
    reply = await raw.call(method, params)
    assert reply["error"]["code"] == "INVALID_PARAMS"
    assert reply["error"]["data"]["field"] == field
    assert field in reply["error"]["message"]


async def test_wrong_type_is_invalid_params_naming_the_field(raw: Raw) -> None:
    reply = await raw.call("list", {"limit": "ten"})
    assert reply["error"]["code"] == "INVALID_PARAMS"
    assert reply["error"]["data"]["field"] == "limit"


async def test_unknown_run_is_not_found(raw: Raw) -> None:
    reply = await raw.call("get", {"run_id": "nope"})
    assert reply["error"]["code"] == "NOT_FOUND"
    assert reply["error"]["data"] == {"run_id": "nope"}


async def test_unknown_workflow_on_submit_is_not_found_naming_it(raw: Raw) -> None:
    reply = await raw.call("submit", {"workflow_id": "no-such-wf", "input": {}})
    assert reply["error"]["code"] == "NOT_FOUND"
    assert reply["error"]["data"] == {"workflow_id": "no-such-wf"}
    assert "no-such-wf" in reply["error"]["message"]


async def test_input_rejected_by_the_validator_is_a_validation_error(raw: Raw) -> None:
    reply = await raw.call("submit", {"workflow_id": "e2e-validated", "input": {"n": "x"}})
    assert reply["error"]["code"] == "VALIDATION"
    assert "integer 'n'" in reply["error"]["message"]


async def test_validation_rejection_creates_no_run_and_valid_input_is_converted(
    daemon: Daemon,
) -> None:
    async with daemon.client() as c:
        with pytest.raises(RemoteError) as err:
            await c.submit("e2e-validated", "not an object")
        assert err.value.code == "VALIDATION"
        assert err.value.data["workflow_id"] == "e2e-validated"
        assert (await c.list())["runs"] == []
        run = await c.submit("e2e-validated", {"n": 3, "dropped": True})
        assert run["input"] == {"n": 3}  # the validator's converted value is what is stored
        assert (await c.wait(run["run_id"], timeout=10))["output"] == {"n": 3}


async def test_oversized_request_is_refused_and_closes_only_that_connection(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(daemon={"max_request_bytes": 4096})
    big = await _open(d.socket)
    async with Client.connect(d.socket) as other:
        huge = {"id": 1, "method": "submit",
                "params": {"workflow_id": "e2e-echo", "input": "x" * 20000}}
        await big.send(huge)
        reply = await big.recv()
        assert reply["error"]["code"] == "REQUEST_TOO_LARGE"
        assert reply["error"]["data"] == {"limit": 4096}
        assert await asyncio.wait_for(big.reader.read(), 10) == b""  # closed by the daemon
        run = await other.submit("e2e-echo", {"small": True})
        assert (await other.wait(run["run_id"], timeout=10))["status"] == "completed"
        runs = (await other.list())["runs"]
        assert [r["run_id"] for r in runs] == [run["run_id"]]  # the big one never got in
    big.writer.close()


async def test_several_requests_in_flight_on_one_connection(raw: Raw) -> None:
    await raw.send({"id": "w", "method": "wait", "params": {"run_id": "nope"}})
    await raw.send({"id": "s", "method": "stats", "params": {}})
    replies = {r["id"]: r for r in [await raw.recv(), await raw.recv()]}
    assert replies["w"]["error"]["code"] == "NOT_FOUND"
    assert "runs" in replies["s"]["result"]
