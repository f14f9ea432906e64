"""``/api/v1/openapi.json``: an OpenAPI 3.1 document built from ``protocol.METHODS``, so a new
request type appears in it without an edit here."""

from __future__ import annotations

import functools
from typing import Any, Final

from orchestrator.api import protocol

_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "bool": {"type": "boolean"},
    "object": {"type": "object"},
    "json": {},
    "str_list": {"type": "array", "items": {"type": "string"}},
    "duration": {"oneOf": [{"type": "number"}, {"type": "string"}],
                 "description": "seconds, or a string such as '10s'"},
    "time": {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]},
    "moment": {"oneOf": [{"type": "number"}, {"type": "string"}],
               "description": "epoch seconds, ISO-8601, or a duration ago such as '1h'"},
}
READ_ONLY: Final = frozenset({"get", "list", "wait", "replay", "workflows", "schedules", "stats",
                             "events"})
"""Methods that change nothing, so ``GET`` may call them (streaming ones may too)."""
_ERROR: Final = {"$ref": "#/components/schemas/Error"}


def allows_get(spec: protocol.MethodSpec) -> bool:
    return spec.streaming or spec.name in READ_ONLY


def param_schema(param: protocol.Param) -> dict[str, Any]:
    schema = dict(_SCHEMAS[param.type])
    if param.choices is not None:
        schema["enum"] = list(param.choices)
    if param.minimum is not None:
        schema["minimum"] = param.minimum
    if param.maximum is not None:
        schema["maximum"] = param.maximum
    if param.default not in (None, ()):
        schema["default"] = param.default
    return schema


def request_schema(spec: protocol.MethodSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {p.name: param_schema(p) for p in spec.params},
        "required": [p.name for p in spec.params if p.required],
        "additionalProperties": False,
    }


def _operation(spec: protocol.MethodSpec) -> dict[str, Any]:
    doc = (spec.request.__doc__ or "").strip()
    ok: dict[str, Any] = (
        {"description": "server-sent events: one `data:` line per event, then `event: end`",
         "content": {"text/event-stream": {"schema": {"type": "string"}}}}
        if spec.streaming else
        {"description": "the method's result", "content": {"application/json": {"schema": {}}}}
    )
    responses: dict[str, Any] = {"200": ok}
    for status in ("400", "401", "403", "404", "409", "413", "503", "507"):
        responses[status] = {"description": "error",
                             "content": {"application/json": {"schema": _ERROR}}}
    return {
        "operationId": spec.name,
        "summary": doc.splitlines()[0] if doc else spec.name,
        "description": doc,
        "requestBody": {"required": any(p.required for p in spec.params),
                        "content": {"application/json": {"schema": request_schema(spec)}}},
        "responses": responses,
    }


@functools.cache
def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for name, spec in protocol.METHODS.items():
        item: dict[str, Any] = {"post": _operation(spec)}
        if allows_get(spec):
            get = dict(_operation(spec), operationId=f"{name}_get")
            del get["requestBody"]
            get["parameters"] = [
                {"name": p.name, "in": "query", "required": p.required, "schema": param_schema(p)}
                for p in spec.params
            ]
            item["get"] = get
        paths[f"/api/v1/{name}"] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "wf engine API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"},
                    "data": {"type": "object"}}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
