from __future__ import annotations

import argparse
import dataclasses

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api import errors, protocol, service


def test_lines_are_one_json_object_each() -> None:
    line = protocol.reply_line(7, {"a": [1, "x"]})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == {"id": 7, "result": {"a": [1, "x"]}}
    err = orjson.loads(protocol.error_line(None, errors.MethodNotFound("nope")))
    assert err == {
        "id": None,
        "error": {
            "code": "METHOD_NOT_FOUND",
            "message": "unknown method 'nope'",
            "data": {"method": "nope"},
        },
    }


def test_lenient_event_renders_non_json_values() -> None:
    line = protocol.event_line(1, {"exc": ValueError("x")}, lenient=True)
    assert "ValueError" in orjson.loads(line)["event"]["exc"]
    with pytest.raises(TypeError):
        protocol.reply_line(1, {"exc": ValueError("x")})


def test_parse_request_reports_bad_json_without_id() -> None:
    with pytest.raises(protocol.BadRequest) as info:
        protocol.parse_request(b"{nope\n")
    assert info.value.id is None
    assert info.value.error.code == "PARSE_ERROR"


def test_parse_request_keeps_id_when_method_is_missing() -> None:
    with pytest.raises(protocol.BadRequest) as info:
        protocol.parse_request(b'{"id": 3}\n')
    assert info.value.id == 3
    assert "method" in info.value.error.message


@given(st.binary(max_size=200))
def test_parse_request_never_raises_anything_but_bad_request(data: bytes) -> None:
    try:
        protocol.parse_request(data)
    except protocol.BadRequest as bad:
        assert bad.error.code in ("PARSE_ERROR", "INVALID_PARAMS")


def test_validate_params_fills_defaults_and_converts_durations() -> None:
    spec = protocol.METHODS["submit"]
    kwargs = protocol.validate_params(
        spec, {"workflow_id": "w", "input": None, "delay": "10s", "tags": ["a"]}
    )
    # Every field of the request type is there, the ones not given at their defaults.
    assert set(kwargs) == {f.name for f in dataclasses.fields(service.Submit)}
    assert {name: kwargs[name] for name in (
        "workflow_id", "input", "run_id", "idempotency_key", "tags", "delay", "priority"
    )} == {
        "workflow_id": "w",
        "input": None,
        "run_id": None,
        "idempotency_key": None,
        "tags": ("a",),
        "delay": 10.0,
        "priority": 0,
    }


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("submit", {"input": 1}, "workflow_id"),
        ("submit", {"workflow_id": "w"}, "input"),
        ("submit", {"workflow_id": 5, "input": 1}, "workflow_id"),
        ("submit", {"workflow_id": "w", "input": 1, "priority": "high"}, "priority"),
        ("submit", {"workflow_id": "w", "input": 1, "priority": True}, "priority"),
        ("submit", {"workflow_id": "w", "input": 1, "tags": ["a", 1]}, "tags"),
        ("submit", {"workflow_id": "w", "input": 1, "delay": "soon"}, "delay"),
        ("submit", {"workflow_id": "w", "input": 1, "bogus": 1}, "bogus"),
        ("get", {"run_id": None}, "run_id"),
        ("retry", {"run_id": "r", "mode": "again"}, "mode"),
        ("list", {"status": "sleeping"}, "status"),
        ("list", {"limit": 0}, "limit"),
        ("stream", {"run_id": "r", "stream_id": "s", "follow": "yes"}, "follow"),
        ("stats", {"x": 1}, "x"),
    ],
)
def test_invalid_params_name_the_field(method: str, params: dict, field: str) -> None:
    with pytest.raises(errors.InvalidParams) as info:
        protocol.validate_params(protocol.METHODS[method], params)
    assert info.value.data["field"] == field
    assert repr(field) in info.value.message


def test_every_error_class_round_trips_through_its_code() -> None:
    samples: list[errors.ServiceError] = [
        errors.ParseError("x"),
        errors.RequestTooLarge(10),
        errors.MethodNotFound("m"),
        errors.InvalidParams("f", "an integer", "str 'x'"),
        errors.NotFound("run", "r1"),
        errors.ValidationFailed("wf", "bad"),
        errors.RunNotActive("r1", "completed", "cancel"),
        errors.NotFrontier("not the frontier", {"later": [{"type": "step", "id": "b", "seq": 3}]}),
        errors.TokenConflict("t"),
        errors.PermissionDenied(65534),
        errors.StorageFull(),
        errors.StorageBusy(),
        errors.ShuttingDown(),
        errors.InternalError("boom"),
    ]
    assert {e.code for e in samples} == set(errors.ErrorCode)
    for err in samples:
        wire = err.to_wire()
        rebuilt = errors.from_wire(wire["code"], wire["message"], wire["data"])
        assert type(rebuilt) is type(err)
        assert rebuilt.message == err.message and rebuilt.data == err.data


def test_error_messages_carry_the_facts() -> None:
    assert errors.NotFound("workflow", "nope").data == {"workflow_id": "nope"}
    assert errors.RunNotActive("r1", "completed", "signal").data["status"] == "completed"
    assert isinstance(errors.NotFound("run", "r"), LookupError)


def _subcommand(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for word in path:
        (choices,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = choices.choices[word]
    return parser


def test_the_method_list_is_written_once() -> None:
    """``service.REQUESTS`` is the one list: the wire schema, the engine's handlers, the named
    methods of the client and the engine, and the ``wf`` subcommands all follow it, none more."""
    from orchestrator.client import cli
    from orchestrator.engine import engine

    methods = [r.method for r in service.REQUESTS]
    assert len(set(methods)) == len(methods)
    assert list(protocol.METHODS) == methods
    assert set(engine._HANDLERS) | set(engine._STREAMS) == set(service.REQUESTS)
    assert not set(engine._HANDLERS) & set(engine._STREAMS)
    named = {name for name, value in vars(service.ServiceMethods).items()
             if callable(value) and not name.startswith("_")} - {"call", "open_stream"}
    assert named == set(methods)
    parser = cli.build_parser()
    for request in service.REQUESTS:
        bound = getattr(service.ServiceMethods, request.method)
        assert (bound.__name__, bound.__doc__) == (request.method, request.__doc__)
        if request.cli:
            assert _subcommand(parser, request.cli).get_default("request") is request
