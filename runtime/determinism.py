"""Deterministic randomness for workflow bodies, bit-exact with the seed runtime.

``ctx.random()`` and ``ctx.random_uuid()`` draw from one Mulberry32 generator seeded with the
FNV-1a 32-bit hash of the run id's UTF-16 code units, so replays see the same values.
"""

from __future__ import annotations

_MASK32 = 0xFFFFFFFF
_HEX = "0123456789abcdef"


def hash_seed(run_id: str) -> int:
    """FNV-1a 32-bit over the UTF-16 code units of ``run_id`` (as JavaScript's charCodeAt)."""
    data = run_id.encode("utf-16-le")
    h = 0x811C9DC5
    for i in range(0, len(data), 2):
        h ^= data[i] | (data[i + 1] << 8)
        h = (h * 0x01000193) & _MASK32
    return h


def _imul(a: int, b: int) -> int:
    return (a * b) & _MASK32


class DeterministicRandom:
    """Mulberry32, seeded from the run id; ``random()`` and ``uuid()`` share one stream."""

    __slots__ = ("_state",)

    def __init__(self, run_id: str) -> None:
        self._state = hash_seed(run_id)

    def random(self) -> float:
        self._state = (self._state + 0x6D2B79F5) & _MASK32
        t = self._state
        t = _imul(t ^ (t >> 15), t | 1)
        t ^= (t + _imul(t ^ (t >> 7), t | 61)) & _MASK32
        return ((t ^ (t >> 14)) & _MASK32) / 4294967296

    def uuid(self) -> str:
        """A v4-shaped UUID string built from 16 draws."""
        b = [int(self.random() * 256) for _ in range(16)]
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        s = "".join(_HEX[x >> 4] + _HEX[x & 0x0F] for x in b)
        return f"{s[0:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:32]}"
