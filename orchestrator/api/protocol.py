"""The socket wire format shared by the server and the client (SPEC §6).

Newline-delimited JSON (orjson). One object per line:

- request ``{"id": 1, "method": "submit", "params": {...}}``
- reply ``{"id": 1, "result": ...}``
- error ``{"id": 1, "error": {"code": "...", "message": "...", "data": {...}}}``
- event ``{"id": 1, "event": ...}`` (streaming methods, before their final ``result``)

Every method has a parameter schema (:data:`METHODS`); :func:`validate_params` checks a request's
params against it, fills the defaults and raises :class:`~orchestrator.errors.InvalidParams`
naming the field. Duration params (``delay``, ``timeout``) accept seconds or strings such as
``"10s"`` and reach the service as float seconds.

Besides the SPEC methods there is one control method, ``$cancel`` (params ``{"id": <request
id>}``): it stops a streaming request of the same connection early. The client sends it when a
stream iterator is closed before its end.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson

from orchestrator.api import errors, service
from orchestrator.api.errors import ErrorCode
from runtime import durations

R = TypeVar("R")

__all__ = [
    "CANCEL_METHOD",
    "DEFAULT_MAX_REQUEST_BYTES",
    "METHODS",
    "RUN_FILTER",
    "ErrorCode",
    "MethodSpec",
    "Param",
    "Request",
    "RequestId",
    "decode_line",
    "encode",
    "error_line",
    "event_line",
    "normalize",
    "parse_params",
    "parse_reply",
    "parse_request",
    "reply_line",
    "request_line",
    "validate_filter",
    "validate_params",
]

RequestId = int | str | None
DEFAULT_MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
CANCEL_METHOD: Final = "$cancel"

# --- framing ---------------------------------------------------------------------------------


def _lenient_default(value: object) -> str:
    return repr(value)


def encode(obj: Any, *, lenient: bool = False) -> bytes:
    """One NDJSON line. ``lenient`` renders non-JSON values with ``repr`` (used for log records,
    which may carry arbitrary objects); otherwise a non-JSON value raises ``TypeError``."""
    default = _lenient_default if lenient else None
    return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def decode_line(line: bytes) -> Any:
    """Decode one line; raise :class:`~orchestrator.errors.ParseError` if it is not JSON."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise errors.ParseError(f"invalid JSON ({exc})") from exc


def request_line(id: RequestId, method: str, params: Mapping[str, Any]) -> bytes:
    return encode({"id": id, "method": method, "params": dict(params)})


def reply_line(id: RequestId, result: Any) -> bytes:
    return encode({"id": id, "result": result})


def event_line(id: RequestId, event: Any, *, lenient: bool = False) -> bytes:
    return encode({"id": id, "event": event}, lenient=lenient)


def error_line(id: RequestId, error: errors.ServiceError) -> bytes:
    return encode({"id": id, "error": error.to_wire()}, lenient=True)


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    method: str
    params: Mapping[str, Any]


class BadRequest(Exception):
    """A request line that cannot be served; ``id`` is the request's id when it had one."""

    def __init__(self, id: RequestId, error: errors.ServiceError) -> None:
        super().__init__(error.message)
        self.id = id
        self.error = error


def parse_request(line: bytes) -> Request:
    """Parse a request line. Raises :class:`BadRequest` carrying the id (``None`` when unknown)
    and a ``PARSE_ERROR``; the method and params are checked later."""
    try:
        obj = decode_line(line)
    except errors.ParseError as exc:
        raise BadRequest(None, exc) from exc
    if not isinstance(obj, dict):
        raise BadRequest(
            None, errors.ParseError(f"a request is a JSON object, got {type(obj).__name__}")
        )
    req_id = obj.get("id")
    if isinstance(req_id, bool) or not isinstance(req_id, int | str | None):
        raise BadRequest(
            None,
            errors.ParseError(f"'id' must be an integer, a string or null, got {req_id!r}"),
        )
    method = obj.get("method")
    if not isinstance(method, str):
        raise BadRequest(req_id, errors.ParseError(f"'method' must be a string, got {method!r}"))
    params = obj.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest(req_id, errors.InvalidParams("params", "an object", _describe(params)))
    return Request(req_id, method, params)


@dataclass(frozen=True, slots=True)
class Reply:
    """A parsed server line: exactly one of ``result``/``error``/``event`` is meaningful."""

    id: RequestId
    kind: str  # "result" | "error" | "event"
    value: Any


def parse_reply(line: bytes) -> Reply:
    """Parse a line sent by the server (used by the client)."""
    obj = decode_line(line)
    if not isinstance(obj, dict):
        raise errors.ParseError(f"a reply is a JSON object, got {type(obj).__name__}")
    req_id = obj.get("id")
    for kind in ("event", "result", "error"):
        if kind in obj:
            return Reply(req_id, kind, obj[kind])
    raise errors.ParseError(f"reply has none of result/error/event: {obj!r}")


# --- parameter schemas ------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: its JSON type (``"str" "int" "bool" "object" "json" "str_list"
    "duration"``), whether it is required, its default, whether null is accepted, and an optional
    set of allowed values."""

    name: str
    type: str
    required: bool = False
    default: Any = None
    nullable: bool = True
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: Any) -> Any:
        """Return the value as the service receives it, or raise ``InvalidParams``."""
        if value is None:
            if self.type == "json":
                return None
            if self.nullable:
                return self.default
            raise errors.InvalidParams(self.name, _EXPECTED[self.type], "null")
        checker = _CHECKERS[self.type]
        ok, converted = checker(value)
        if not ok:
            raise errors.InvalidParams(self.name, _EXPECTED[self.type], _describe(value))
        if self.minimum is not None and self.maximum is not None and not (
            self.minimum <= converted <= self.maximum
        ):
            expected = f"an integer in {self.minimum}..{self.maximum}"
            raise errors.InvalidParams(self.name, expected, _describe(value))
        if self.minimum is not None and converted < self.minimum:
            raise errors.InvalidParams(self.name, f"an integer >= {self.minimum}", _describe(value))
        if self.choices is not None and converted not in self.choices:
            expected = "one of " + ", ".join(repr(c) for c in self.choices)
            raise errors.InvalidParams(self.name, expected, _describe(value))
        return converted


def _check_str(v: Any) -> tuple[bool, Any]:
    return isinstance(v, str), v


def _check_int(v: Any) -> tuple[bool, Any]:
    return isinstance(v, int) and not isinstance(v, bool), v


def _check_bool(v: Any) -> tuple[bool, Any]:
    return isinstance(v, bool), v


def _check_object(v: Any) -> tuple[bool, Any]:
    return isinstance(v, dict), v


def _check_json(v: Any) -> tuple[bool, Any]:
    return True, v


def _check_str_list(v: Any) -> tuple[bool, Any]:
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return True, tuple(v)
    return False, v


def _check_time(v: Any) -> tuple[bool, Any]:
    """Epoch seconds, or an ISO-8601 time (a naive one is UTC)."""
    if isinstance(v, bool):
        return False, v
    if isinstance(v, int | float):
        return True, float(v)
    if isinstance(v, str):
        try:
            parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return False, v
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return True, parsed.timestamp()
    return False, v


def _check_moment(v: Any) -> tuple[bool, Any]:
    """A time as ``_check_time`` takes it, or a duration meaning that long ago ("1h")."""
    ok, at = _check_time(v)
    if ok or not isinstance(v, str):
        return ok, at
    try:
        return True, time.time() - durations.to_seconds(v)
    except ValueError:
        return False, v


def _check_duration(v: Any) -> tuple[bool, Any]:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return False, v
    try:
        return True, durations.to_seconds(v)
    except ValueError:
        return False, v


_CHECKERS: Final[dict[str, Callable[[Any], tuple[bool, Any]]]] = {
    "str": _check_str,
    "int": _check_int,
    "bool": _check_bool,
    "object": _check_object,
    "json": _check_json,
    "str_list": _check_str_list,
    "duration": _check_duration,
    "time": _check_time,
    "moment": _check_moment,
}
_EXPECTED: Final = {
    "str": "a string",
    "int": "an integer",
    "bool": "a boolean",
    "object": "an object",
    "json": "any JSON value",
    "str_list": "a list of strings",
    "duration": "a duration (seconds or a string such as '10s')",
    "time": "a time (epoch seconds or ISO-8601 such as '2026-12-24T18:00:00Z')",
    "moment": "a time (epoch seconds or ISO-8601) or a duration ago (e.g. '1h')",
}


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """A method as the server sees it: its request type, its params, and whether it streams
    (``lossy`` streams may drop events for a slow reader and send a ``lagged`` notice)."""

    name: str
    request: type[service.Request[Any]]
    params: tuple[Param, ...] = ()
    streaming: bool = False
    lossy: bool = False


_SIMPLE_TYPES: Final = {
    "str": "str",
    "int": "int",
    "bool": "bool",
    "JSON": "json",
    "JSONDict": "object",
    "tuple[str, ...]": "str_list",
}


def _param(f: dataclasses.Field[Any]) -> Param:
    annotation = str(f.type)
    nullable = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    kind = f.metadata.get("type") or _SIMPLE_TYPES.get(base)
    if kind is None:
        raise TypeError(f"request field {f.name!r}: no wire type for annotation {annotation!r}")
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return Param(
        f.name,
        kind,
        required=required,
        default=None if required else f.default,
        nullable=nullable or not required,
        choices=f.metadata.get("choices"),
        minimum=f.metadata.get("minimum"),
        maximum=f.metadata.get("maximum"),
    )


def _spec(request: type[service.Request[Any]]) -> MethodSpec:
    return MethodSpec(
        request.method,
        request,
        tuple(_param(f) for f in dataclasses.fields(request)),  # type: ignore[arg-type]
        streaming=request.streaming,
        lossy=request.lossy,
    )


METHODS: Final[dict[str, MethodSpec]] = {r.method: _spec(r) for r in service.REQUESTS}
"""Every method's schema, derived from the request types of :mod:`orchestrator.api.service`."""


def validate_params(spec: MethodSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the method's schema and return the request's keyword arguments
    (defaults filled, durations in seconds, string lists as tuples)."""
    known = {p.name for p in spec.params}
    for name in params:
        if name not in known:
            expected = "one of " + ", ".join(sorted(known)) if known else "no params"
            raise errors.InvalidParams(name, f"a known parameter ({expected})", "unknown name")
    kwargs: dict[str, Any] = {}
    for param in spec.params:
        value = params.get(param.name, _MISSING)
        if value is _MISSING:
            if param.required:
                raise errors.InvalidParams(param.name, _EXPECTED[param.type], "nothing (missing)")
            kwargs[param.name] = param.default
            continue
        kwargs[param.name] = param.check(value)
    return kwargs


RUN_FILTER: Final = (
    Param("status", "str", choices=service.RUN_STATUSES),
    Param("workflow_id", "str"),
    Param("tag", "str"),
    Param("since", "moment"),
    Param("until", "moment"),
    Param("search", "str"),
)
"""The fields of a run filter (``bulk``'s ``filter``): every one optional, null is absent."""


def validate_filter(value: Mapping[str, Any], *, field: str = "filter") -> dict[str, Any]:
    """Check a run filter; ``InvalidParams`` names the field as ``filter.<name>``. Returns the
    given fields, converted (``since``/``until`` as epoch seconds)."""
    known = {p.name for p in RUN_FILTER}
    for name in value:
        if name not in known:
            expected = "one of " + ", ".join(sorted(known))
            raise errors.InvalidParams(f"{field}.{name}", f"a filter field ({expected})",
                                       "unknown name")
    out: dict[str, Any] = {}
    for param in RUN_FILTER:
        if value.get(param.name) is not None:
            named = dataclasses.replace(param, name=f"{field}.{param.name}")
            out[param.name] = named.check(value[param.name])
    return out


def parse_params(spec: MethodSpec, params: Mapping[str, Any]) -> service.Request[Any]:
    """The request object for ``params`` (``InvalidParams`` naming the field if they are bad)."""
    return spec.request(**validate_params(spec, params))


def normalize(request: service.Request[R]) -> service.Request[R]:
    """Validate a request built in process exactly as one read from the wire would be."""
    spec = METHODS[request.method]
    normal: service.Request[R] = parse_params(spec, request.params())
    return normal
