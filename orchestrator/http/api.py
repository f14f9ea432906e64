"""``/api/v1``: every socket method over HTTP, derived from ``protocol.METHODS`` (SPEC §12).

``POST /api/v1/<method>`` with the params as a JSON object; read-only and streaming methods
also answer ``GET`` with the params in the query string (a list param repeats its key). The
body of a reply is the method's result; an error is ``{"error": {code, message, data}}`` with
the SPEC's HTTP status. Streaming methods answer with server-sent events: one ``data:`` line
per event, then ``event: end`` (or ``event: error``). REST aliases: ``GET/POST /api/v1/runs``,
``GET /api/v1/runs/{run_id}``, ``POST /api/v1/runs/{run_id}/{action}``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from orchestrator.api import errors, protocol, service
from orchestrator.http import openapi
from orchestrator.http.openapi import allows_get

STATUS_BY_CODE: Final[dict[str, int]] = {
    errors.ErrorCode.PARSE_ERROR: 400,
    errors.ErrorCode.INVALID_PARAMS: 400,
    errors.ErrorCode.VALIDATION: 400,
    errors.ErrorCode.PERMISSION_DENIED: 403,
    errors.ErrorCode.NOT_FOUND: 404,
    errors.ErrorCode.METHOD_NOT_FOUND: 404,
    errors.ErrorCode.RUN_NOT_ACTIVE: 409,
    errors.ErrorCode.NOT_FRONTIER: 409,
    errors.ErrorCode.TOKEN_CONFLICT: 409,
    errors.ErrorCode.REQUEST_TOO_LARGE: 413,
    errors.ErrorCode.STORAGE_BUSY: 503,
    errors.ErrorCode.SHUTTING_DOWN: 503,
    errors.ErrorCode.STORAGE_FULL: 507,
    errors.ErrorCode.INTERNAL: 500,
}
RUN_ACTIONS: Final = ("cancel", "pause", "resume", "retry", "reschedule", "replay", "signal",
                      "wait")

_log = structlog.get_logger("wf.http")


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=repr, option=orjson.OPT_NON_STR_KEYS)


def error_response(err: errors.ServiceError) -> Response:
    return JSONBody({"error": err.to_wire()}, STATUS_BY_CODE.get(str(err.code), 500))


class Api:
    def __init__(self, service_: service.Service, max_request_bytes: int) -> None:
        self.service = service_
        self.max_request_bytes = max_request_bytes

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/v1/runs", self.runs, methods=["GET", "POST"]),
            Route("/api/v1/runs/{run_id}", self.run, methods=["GET"]),
            Route("/api/v1/runs/{run_id}/{action}", self.run_action, methods=["POST"]),
            Route("/api/v1/{method}", self.method, methods=["GET", "POST"]),
        ]

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi.document())

    async def method(self, request: Request) -> Response:
        name = request.path_params["method"]
        try:
            spec = protocol.METHODS.get(name)
            if spec is None:
                raise errors.MethodNotFound(name)
            if request.method == "GET":
                if not allows_get(spec):
                    return JSONBody({"error": {
                        "code": "METHOD_NOT_ALLOWED", "data": {"method": name},
                        "message": f"{name!r} changes state: use POST"}}, 405,
                        headers={"Allow": "POST"})
                params = query_params(spec, request)
            else:
                params = await self.body(request)
        except errors.ServiceError as err:
            return error_response(err)
        return await self.serve(spec, params, request)

    async def runs(self, request: Request) -> Response:
        if request.method == "GET":
            return await self.serve(protocol.METHODS["list"],
                                    query_params(protocol.METHODS["list"], request), request)
        try:
            params = await self.body(request)
        except errors.ServiceError as err:
            return error_response(err)
        return await self.serve(protocol.METHODS["submit"], params, request)

    async def run(self, request: Request) -> Response:
        return await self.serve(protocol.METHODS["get"],
                                {"run_id": request.path_params["run_id"]}, request)

    async def run_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in RUN_ACTIONS:
            return error_response(errors.MethodNotFound(f"runs/{{run_id}}/{action}"))
        try:
            params = await self.body(request)
        except errors.ServiceError as err:
            return error_response(err)
        params["run_id"] = request.path_params["run_id"]
        return await self.serve(protocol.METHODS[action], params, request)

    async def body(self, request: Request) -> dict[str, Any]:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.max_request_bytes:
            raise errors.RequestTooLarge(self.max_request_bytes)
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > self.max_request_bytes:
                raise errors.RequestTooLarge(self.max_request_bytes)
        if not chunks.strip():
            return {}
        params = protocol.decode_line(bytes(chunks))
        if not isinstance(params, dict):
            raise errors.ParseError(f"the body must be a JSON object of params, "
                                    f"got {type(params).__name__}")
        return params

    async def serve(self, spec: protocol.MethodSpec, params: Mapping[str, Any],
                    request: Request) -> Response:
        try:
            call = protocol.parse_params(spec, params)
            if isinstance(call, service.StreamRequest):
                return StreamingResponse(
                    sse(self.service.open_stream(call)), media_type="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
            return JSONBody(await self.service.dispatch(call))
        except errors.ServiceError as err:
            return error_response(err)
        except Exception as exc:  # the detail goes to the log, never a trace to the caller
            _log.error("http.internal_error", method=spec.name, exc_info=exc)
            return error_response(errors.InternalError(type(exc).__name__))


def query_params(spec: protocol.MethodSpec, request: Request) -> dict[str, Any]:
    """Query-string values as the JSON params would carry them: strings stay strings; int,
    bool, object and JSON values are parsed as JSON; a list param repeats its key."""
    known = {p.name: p for p in spec.params}
    out: dict[str, Any] = {}
    for name in request.query_params:
        param = known.get(name)
        values = request.query_params.getlist(name)
        if param is None:
            out[name] = values[-1]  # validate_params names it as unknown
        elif param.type == "str_list":
            out[name] = values
        elif param.type in ("int", "bool", "object", "json"):
            try:
                out[name] = orjson.loads(values[-1])
            except orjson.JSONDecodeError:
                out[name] = values[-1]  # the type check names the field
        else:
            out[name] = values[-1]
    return out


def sse_event(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data, default=repr) + b"\n\n"


SSE_BUFFER: Final = 1024
"""Encoded events a stream may hold for a slow HTTP reader before it stops reading its source
(a lossy source then drops and sends ``lagged``, as on the socket)."""


async def sse(events: AsyncIterator[service.JSONDict]) -> AsyncIterator[bytes]:
    """A stream's events as server-sent events; closing the response closes the stream.

    A pump task reads the source into a bounded buffer and the response sends everything
    buffered as one chunk: a burst of events (a busy runs page) costs one HTTP write per loop
    turn, not one per event, so an open dashboard does not slow the engine.
    """
    buffer: list[bytes] = []
    ready = asyncio.Event()  # something to send, or the pump ended
    room = asyncio.Event()  # the buffer has room
    room.set()
    sent = 0
    tail: list[bytes] = []

    async def pump() -> None:
        nonlocal sent
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for item in events:
                    await room.wait()
                    buffer.append(sse_event(item))
                    sent += 1
                    if len(buffer) >= SSE_BUFFER:
                        room.clear()
                    ready.set()
            tail.append(sse_event({"events": sent}, "end"))
        except errors.ServiceError as err:
            tail.append(sse_event(err.to_wire(), "error"))
        except Exception as exc:  # logged; the reader gets an error event, not a trace
            _log.error("http.stream_error", exc_info=exc)
            tail.append(sse_event(errors.InternalError(type(exc).__name__).to_wire(), "error"))
        finally:
            ready.set()

    task = asyncio.create_task(pump(), name="http:sse")
    try:
        yield b": stream open\n\n"  # headers and a first byte out at once
        while True:
            await ready.wait()
            ready.clear()
            if buffer:
                chunk = b"".join(buffer)
                buffer.clear()
                room.set()
                yield chunk
            if task.done():
                if buffer:
                    yield b"".join(buffer)
                if tail:
                    yield tail[0]
                return
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
