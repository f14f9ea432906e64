"""Duration parsing shared by the SDK, the config loader and the CLI.

A duration is seconds (``int``/``float``), a ``datetime.timedelta``, or a string made of a number
and one unit: ``"250ms" "30s" "5m" "24h" "7d" "1w"``.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

Duration = int | float | timedelta | str

_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def to_seconds(value: Duration) -> float:
    """Return ``value`` in seconds; raise ``ValueError`` naming the value if it is not one."""
    if isinstance(value, bool):  # bool is an int subclass; True seconds is never what was meant
        raise ValueError(f"invalid duration {value!r}: expected seconds, a timedelta or e.g. '30s'")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: expected a number and a unit "
                "(ms, s, m, h, d, w), e.g. '250ms' or '24h'"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r} ({type(value).__name__}): "
            "expected seconds, a timedelta or a string such as '30s'"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be finite and not negative")
    return seconds


def to_timedelta(value: Duration) -> timedelta:
    """Like :func:`to_seconds`, as a ``timedelta``."""
    return timedelta(seconds=to_seconds(value))
