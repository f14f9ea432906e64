"""Deep-subset matching of event payloads against a persisted ``match`` pattern."""

from __future__ import annotations

from typing import Any


def validate_pattern(match: Any) -> dict[str, Any] | None:
    """Return ``match`` if it is a JSON object (or None); reject what cannot be persisted."""
    if match is None:
        return None
    if callable(match):
        raise TypeError(
            "match must be a JSON object (dict), not a callable: a callable cannot be persisted "
            "with the waitpoint, so it could not be evaluated after a restart"
        )
    if not isinstance(match, dict):
        raise TypeError(f"match must be a JSON object (dict), got {type(match).__name__}")
    return match


def is_subset(pattern: Any, value: Any) -> bool:
    """True when ``pattern`` is a deep subset of ``value``.

    Objects match when every key of the pattern is present and matches; arrays match element by
    element with equal length; scalars match by equality, and ``True`` never equals ``1``.
    """
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        for key, sub in pattern.items():
            if key not in value or not is_subset(sub, value[key]):
                return False
        return True
    if isinstance(pattern, list):
        if not isinstance(value, list) or len(pattern) != len(value):
            return False
        return all(is_subset(p, v) for p, v in zip(pattern, value, strict=True))
    if isinstance(pattern, bool) or isinstance(value, bool):
        return isinstance(pattern, bool) and isinstance(value, bool) and pattern is value
    return bool(pattern == value)


def matches(pattern: dict[str, Any] | None, payload: Any) -> bool:
    """An absent pattern matches every payload."""
    return pattern is None or is_subset(pattern, payload)
