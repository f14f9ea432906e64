"""Every socket method over ``/api/v1`` (SPEC §12), with the round-trip cases of the socket
client's test (``test_client.CASES``) replayed through plain httpx against the ASGI app served
by uvicorn on this loop (``HttpServer``, as the daemon runs it): each method answers with the
same result, each error with its code in the body and the SPEC's HTTP status; streaming
methods arrive as server-sent events. Also: the status table itself, STORAGE_FULL and
SHUTTING_DOWN from a real engine, and ``/readyz`` when not ready."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import storage
from orchestrator.api import errors, service
from orchestrator.client.client import remote_error
from orchestrator.config import Config
from orchestrator.daemon.compose import Orchestrator
from orchestrator.daemon.http import build_http
from orchestrator.engine.engine import Engine
from orchestrator.http.api import STATUS_BY_CODE
from orchestrator.http.app import create_app
from orchestrator.http.server import HttpServer
from orchestrator.http.settings import HttpSettings
from tests.orchestrator.conftest import FaultyStorage, until
from tests.orchestrator.test_client import CASES, _completed_echo, _expect_code

TOKEN = "methods-token"

# SPEC §12's mapping, as written there (the rest: METHOD_NOT_FOUND 404, NOT_FRONTIER 409,
# PERMISSION_DENIED 403, STORAGE_BUSY 503, INTERNAL 500; docs/decisions.md, "API shape").
SPEC_STATUS = {
    "INVALID_PARAMS": 400, "PARSE_ERROR": 400, "VALIDATION": 400, "NOT_FOUND": 404,
    "RUN_NOT_ACTIVE": 409, "TOKEN_CONFLICT": 409, "REQUEST_TOO_LARGE": 413,
    "SHUTTING_DOWN": 503, "STORAGE_FULL": 507, "METHOD_NOT_FOUND": 404, "NOT_FRONTIER": 409,
    "PERMISSION_DENIED": 403, "STORAGE_BUSY": 503, "INTERNAL": 500,
}
SEEN_CODES: set[str] = set()


def _error(response: httpx.Response, body: bytes) -> Exception:
    """The error reply as the socket client raises it, after checking its HTTP status."""
    error = orjson.loads(body)["error"]
    code = error["code"]
    assert response.status_code == SPEC_STATUS[code], (code, response.status_code)
    SEEN_CODES.add(code)
    return remote_error(error)


class HttpClient(service.ServiceMethods):
    """The service methods over ``/api/v1`` with a bearer token: a POST of the params as a JSON
    object; a streaming method's server-sent events read until ``end`` (or ``error``)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def call(self, request: service.Request[Any]) -> Any:
        r = await self.http.post(f"/api/v1/{request.method}",
                                 content=orjson.dumps(request.params()))
        if r.status_code != 200:
            raise _error(r, r.content)
        return r.json()

    async def open_stream(self, request: service.StreamRequest  # type: ignore[override]
                          ) -> AsyncIterator[dict[str, Any]]:
        async with self.http.stream("POST", f"/api/v1/{request.method}",
                                    content=orjson.dumps(request.params())) as r:
            if r.status_code != 200:
                raise _error(r, await r.aread())
            assert r.headers["content-type"].startswith("text/event-stream")
            name = "message"
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = orjson.loads(line[6:])
                    if name == "end":
                        return
                    if name == "error":
                        SEEN_CODES.add(data["code"])
                        raise remote_error(data)
                    yield data
                    name = "message"


async def _amend_over_http(c: HttpClient, engine: Engine) -> None:
    """``test_client``'s amend case, but the audit row names no uid: TCP has no peer
    credentials (the socket's is from SO_PEERCRED); the token is the only identity."""
    await c.submit("fail", None, run_id="f")
    assert (await c.wait("f"))["status"] == "failed"
    await _expect_code("NOT_FOUND", c.amend("f", "nope", 1, "unknown step"))
    amended = await c.amend("f", "boom", {"fixed": True}, "by hand")
    assert amended["status"] == "failed"
    (row,) = (await c.get("f"))["audit"]
    assert row["new"] == {"status": "completed", "output": {"fixed": True}}
    assert row["peer_uid"] is None and row["reason"] == "by hand"
    assert (await c.retry("f"))["status"] in ("pending", "running", "completed")
    assert (await c.wait("f"))["status"] == "completed"
    await _completed_echo(c)  # type: ignore[arg-type]
    await _expect_code("RUN_NOT_ACTIVE", c.amend("done", "fetch", 1, "completed"))


HTTP_CASES: dict[Any, Any] = {**CASES, service.Amend: _amend_over_http}


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[HttpClient]:
    server = HttpServer(create_app(engine, HttpSettings(token=TOKEN)), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            yield HttpClient(http)
    finally:
        await server.close()


@pytest.mark.parametrize("request_type", service.REQUESTS, ids=lambda r: r.method)
async def test_every_method_round_trips_over_http(
    request_type: type[service.Request[Any]], api: HttpClient, engine: Engine, log_feed: object
) -> None:
    """The socket client's case for each method, through HTTP: results and error codes."""
    assert request_type in HTTP_CASES, f"no round-trip case for {request_type.method!r}"
    await HTTP_CASES[request_type](api, engine)
    assert "workflows" in await api.workflows()


def test_every_error_code_has_the_specs_status() -> None:
    assert {str(code) for code in errors.ErrorCode} == set(SPEC_STATUS)
    assert {str(code): status for code, status in STATUS_BY_CODE.items()} == SPEC_STATUS


async def test_storage_full_and_shutting_down_reach_http_with_their_status(
        api: HttpClient, engine: Engine, store: FaultyStorage) -> None:
    store.fail("create_run", storage.StorageFull("database or disk is full"))
    with pytest.raises(errors.StorageFull):
        await api.submit("echo", 1, run_id="r")
    assert (await api.submit("echo", 1, run_id="r"))["run_id"] == "r"  # space is back
    await engine.close()
    with pytest.raises(errors.ShuttingDown):
        await api.submit("echo", 1)


async def test_readyz_is_503_until_ready_and_says_why(engine: Engine) -> None:
    state: dict[str, Any] = {"ready": False}

    async def ready() -> bool:
        if state.get("boom"):
            raise RuntimeError("storage gone")
        return bool(state["ready"])

    app = create_app(engine, HttpSettings(token=TOKEN), readiness=ready)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://127.0.0.1:8490") as c:
        r = await c.get("/readyz")
        assert (r.status_code, r.json()) == (503, {"status": "unavailable"})
        state["ready"] = True
        assert (await c.get("/readyz")).status_code == 200
        state["boom"] = True
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["reason"] == "RuntimeError"
        assert "Traceback" not in r.text
        assert (await c.get("/healthz")).status_code == 200  # up, though not ready


async def test_a_metrics_scrape_reads_no_table(tmp_path: Path) -> None:
    """The daemon's ``/metrics`` (``build_http`` over a composed orchestrator): a scrape is
    served from memory; the only read is the waiting count's, on its own 15 s beat."""
    cfg = Config.default(tmp_path)
    cfg = dataclasses.replace(cfg, http=dataclasses.replace(cfg.http, host="127.0.0.1", port=0,
                                                            token=TOKEN))
    async with Orchestrator(cfg, import_modules=False) as orch:
        db = orch.engine.storage
        seen: list[str] = []
        fetch = db._fetch  # type: ignore[attr-defined]

        async def spy(sql: str, *args: Any, **kwargs: Any) -> Any:
            seen.append(sql)
            return await fetch(sql, *args, **kwargs)

        db._fetch = spy  # type: ignore[attr-defined]
        server = build_http(orch)
        assert server is not None
        await server.start()
        try:
            await until(lambda: any("waitpoints" in sql for sql in seen), "the waiting count")
            seen.clear()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}",
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as c:
                for _ in range(3):
                    r = await c.get("/metrics")
                    assert r.status_code == 200 and "wf_waitpoints_waiting" in r.text
        finally:
            await server.close()
    assert seen == []
