"""Apply a power cut to a database after ``kill -9``, from the shim's write log.

Model (SQLite's own crash tests, test6.c, do the same per sector):
- Writes to a file before its last successful fsync/fdatasync are durable: left alone.
- Every write after it is unsynced: for each 512-byte sector it touches, a seeded choice keeps
  the new bytes, restores the pre-image or writes garbage. Only the written bytes change:
  SQLite assumes powersafe overwrite (untouched bytes of a sector survive), and so do we.
  Records are undone newest-first, so pre-images compose: restoring every write of a sector
  brings back its last durable content, restoring some gives an intermediate writeback state.
- A failed fsync (``E``) dooms every write since the previous good sync of that file: Linux
  marks those pages clean after a writeback error, so they never reach the disk, even after a
  later good fsync. They are always restored, except in 4 KiB pages a later durable write
  re-dirtied (the kernel then writes the whole page again).
- Bytes restored past the file's old end become zeros (an allocated, never-written extent).
- An unsynced truncate is kept or undone (seeded); a doomed one is undone.
- ``-shm`` is deleted: it lives in memory and SQLite rebuilds it from the WAL on first open.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

HEADER = struct.Struct("<IBBHqqqq")
MAGIC = 0x57465348
SECTOR = 512
PAGE = 4096
SUFFIXES = ("", "-wal")  # file index in the log -> suffix of the database path


@dataclass(frozen=True, slots=True)
class Record:
    kind: str  # W write, T truncate, S synced, E fsync failed
    file: int
    off: int
    length: int
    pre: bytes
    size_before: int


@dataclass(slots=True)
class TearStats:
    """What a power cut did, for the progress lines and the report."""

    durable: int = 0
    unsynced: int = 0
    doomed: int = 0
    sectors: dict[str, int] = field(default_factory=lambda: {"keep": 0, "restore": 0,
                                                             "garbage": 0})
    truncates_undone: int = 0


def read_log(path: Path) -> list[Record]:
    data = path.read_bytes() if path.exists() else b""
    out: list[Record] = []
    pos = 0
    while pos + HEADER.size <= len(data):
        magic, kind, file, _pad, off, length, pre_len, size_before = HEADER.unpack_from(data, pos)
        if magic != MAGIC:
            raise ValueError(f"shim log {path}: bad record at byte {pos}")
        pos += HEADER.size
        out.append(Record(chr(kind), file, off, length, data[pos:pos + pre_len], size_before))
        pos += pre_len
    if pos != len(data):
        raise ValueError(f"shim log {path}: {len(data) - pos} trailing bytes")
    return out


def _classify(records: list[Record]) -> list[str]:
    """For each record: 'durable', 'unsynced', 'doomed' or '' (markers)."""
    state = [""] * len(records)
    pending: dict[int, list[int]] = {}  # file -> indices of writes since its last sync/failure
    for i, rec in enumerate(records):
        if rec.kind in "WT":
            pending.setdefault(rec.file, []).append(i)
            continue
        verdict = "durable" if rec.kind == "S" else "doomed"
        for j in pending.pop(rec.file, []):
            state[j] = verdict
    for indices in pending.values():
        for j in indices:
            state[j] = "unsynced"
    return state


def power_cut(db: Path, log: Path, rng: random.Random) -> TearStats:
    """Tear ``db`` and its WAL as a power cut would have, per the shim log."""
    records = read_log(log)
    state = _classify(records)
    stats = TearStats()
    durable_pages: dict[int, set[int]] = {0: set(), 1: set()}
    handles: dict[int, int] = {}
    try:
        for i in range(len(records) - 1, -1, -1):
            rec, verdict = records[i], state[i]
            if not verdict:
                continue
            setattr(stats, verdict, getattr(stats, verdict) + 1)
            if rec.file not in handles:
                path = f"{db}{SUFFIXES[rec.file]}"
                if not os.path.exists(path):
                    continue  # deleted since (a clean close); nothing left to tear
                handles[rec.file] = os.open(path, os.O_RDWR)
            fd = handles[rec.file]
            if verdict == "durable":
                if rec.kind == "W":
                    durable_pages[rec.file].update(_pages(rec.off, rec.length))
            elif rec.kind == "T":
                if verdict == "doomed" or rng.random() < 0.5:
                    _undo_truncate(fd, rec)
                    stats.truncates_undone += 1
            elif verdict == "doomed":
                _restore(fd, rec, rec.off, rec.off + rec.length, durable_pages[rec.file])
            else:
                _tear(fd, rec, rng, stats)
    finally:
        for fd in handles.values():
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{db}-shm")
    return stats


def _pages(off: int, length: int) -> range:
    return range(off // PAGE, (off + max(length, 1) - 1) // PAGE + 1)


def _tear(fd: int, rec: Record, rng: random.Random, stats: TearStats) -> None:
    start = rec.off
    end = rec.off + rec.length
    while start < end:
        stop = min(end, (start // SECTOR + 1) * SECTOR)
        choice = rng.choice(("keep", "restore", "garbage"))
        stats.sectors[choice] += 1
        if choice == "restore":
            _restore(fd, rec, start, stop, set())
        elif choice == "garbage":
            os.pwrite(fd, rng.randbytes(stop - start), start)
        start = stop


def _restore(fd: int, rec: Record, start: int, stop: int, skip_pages: set[int]) -> None:
    """Put back the pre-image of ``rec`` over [start, stop), zeros past the old end of file."""
    for page in sorted(set(_pages(start, stop - start)) - skip_pages):
        lo, hi = max(start, page * PAGE), min(stop, (page + 1) * PAGE)
        if lo >= hi:
            continue
        old = rec.pre[lo - rec.off:hi - rec.off]
        os.pwrite(fd, old + bytes(hi - lo - len(old)), lo)


def _undo_truncate(fd: int, rec: Record) -> None:
    size = rec.off
    if rec.size_before > size:
        os.pwrite(fd, rec.pre + bytes(rec.size_before - size - len(rec.pre)), size)
