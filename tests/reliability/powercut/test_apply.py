"""The power-cut model itself: durable writes stay, unsynced ones are torn per sector with
pre-images composing newest-first, writes a failed fsync covered are dropped."""

from __future__ import annotations

import random
from pathlib import Path

from tests.reliability.powercut.apply import HEADER, MAGIC, power_cut


class FakeShim:
    """Writes to a file and its log exactly as shim.c would."""

    def __init__(self, root: Path) -> None:
        self.db = root / "wf.db"
        self.db.write_bytes(b"")
        self.log = root / "shim.log"
        self.records = bytearray()

    def _rec(self, kind: str, off: int = 0, length: int = 0, pre: bytes = b"") -> None:
        size = self.db.stat().st_size
        self.records += HEADER.pack(MAGIC, ord(kind), 0, 0, off, length, len(pre), size) + pre
        self.log.write_bytes(bytes(self.records))

    def write(self, off: int, data: bytes) -> None:
        with self.db.open("r+b") as fh:
            fh.seek(off)
            pre = fh.read(len(data))
            self._rec("W", off, len(data), pre)
            fh.seek(off)
            fh.write(data)

    def sync(self, ok: bool = True) -> None:
        self._rec("S" if ok else "E")


def test_durable_writes_survive_and_unsynced_ones_tear_per_sector(tmp_path: Path) -> None:
    shim = FakeShim(tmp_path)
    shim.write(0, b"A" * 2048)
    shim.sync()
    shim.write(0, b"B" * 2048)
    shim.write(0, b"C" * 2048)  # two unsynced layers: restoring both must give back A
    stats = power_cut(shim.db, shim.log, random.Random(3))
    data = shim.db.read_bytes()
    assert stats.durable == 1 and stats.unsynced == 2
    sectors = [data[i:i + 512] for i in range(0, 2048, 512)]
    assert any(s in (b"A" * 512, b"B" * 512) for s in sectors)  # some sector reverted
    for s in sectors:  # each sector is one of the states it went through, or garbage
        assert s in (b"A" * 512, b"B" * 512, b"C" * 512) or len(set(s)) > 2


def test_writes_a_failed_fsync_covered_are_lost_even_after_a_later_sync(tmp_path: Path) -> None:
    shim = FakeShim(tmp_path)
    shim.write(0, b"A" * 8192)
    shim.sync()
    shim.write(0, b"B" * 8192)
    shim.sync(ok=False)  # EIO: the kernel drops these pages
    shim.write(4096, b"C" * 10)  # re-dirties the second page only
    shim.sync()
    power_cut(shim.db, shim.log, random.Random(1))
    data = shim.db.read_bytes()
    assert data[:4096] == b"A" * 4096
    assert data[4096:4106] == b"C" * 10 and data[4106:] == b"B" * (8192 - 4106)
