"""JSON round-trips for recorded values: what the body gets back is what was recorded."""

from __future__ import annotations

from typing import Any

import orjson

from runtime import errors

# Refuse what JSON cannot carry instead of letting orjson stringify it (datetime, dataclass,
# str/int subclasses such as enums): a value must come back the same on replay.
_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _first_bad_type(value: Any) -> str:
    if value is None or type(value) in (str, int, float, bool):
        return ""
    if type(value) in (list, tuple):
        for item in value:
            bad = _first_bad_type(item)
            if bad:
                return bad
        return ""
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{type(key).__name__} (as a dict key)"
            bad = _first_bad_type(item)
            if bad:
                return bad
        return ""
    return type(value).__qualname__


def round_trip(value: Any, *, what: str, max_bytes: int | None = None) -> Any:
    """Encode ``value`` as JSON and decode it again; raise ``NOT_SERIALIZABLE`` naming ``what``.

    Tuples come back as lists, exactly as they will on replay.
    """
    bad = _first_bad_type(value)
    if bad:
        raise errors.FatalError(
            f"{what} returned a value of type {bad}, which is not JSON-serializable",
            code="NOT_SERIALIZABLE",
            data={"type": bad},
        )
    try:
        encoded = orjson.dumps(value, option=_OPTS)
    except TypeError as exc:  # e.g. an int too large for JSON numbers
        raise errors.FatalError(
            f"{what} returned a value that is not JSON-serializable: {exc}",
            code="NOT_SERIALIZABLE",
            data={"type": type(value).__qualname__},
        ) from exc
    if max_bytes is not None and len(encoded) > max_bytes:
        raise errors.FatalError(
            f"{what} is {len(encoded)} bytes of JSON, above limits.max_payload_bytes={max_bytes}",
            code="PAYLOAD_TOO_LARGE",
            data={"size": len(encoded), "limit": max_bytes},
        )
    if type(value) in (str, int, bool) or value is None:
        return value  # scalars decode to themselves; skip the second pass on the hot path
    return orjson.loads(encoded)
