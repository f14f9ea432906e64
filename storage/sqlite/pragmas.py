"""Connection set-up: file modes and the one function that sets every pragma."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Literal

Synchronous = Literal["full", "normal"]

FILE_MODE = 0o600
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""The WAL is truncated back to this size after a checkpoint (SPEC §4: bounded WAL)."""


def pragma_statements(
    *,
    synchronous: Synchronous,
    busy_timeout_ms: int,
    max_page_count: int | None = None,
    writer: bool,
) -> list[str]:
    """Every pragma a connection gets, in order. Readers get ``query_only``."""
    if synchronous not in ("full", "normal"):
        raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
    stmts = [
        f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
        # Takes effect only on a new, empty file, and only before journal_mode writes its first
        # page: retention then gives pruned pages back (incremental_vacuum). Existing files keep
        # their mode (converting needs a full VACUUM); freed pages are reused there instead.
        *(["PRAGMA auto_vacuum = INCREMENTAL"] if writer else []),
        "PRAGMA journal_mode = WAL",
        f"PRAGMA synchronous = {synchronous.upper()}",
        "PRAGMA foreign_keys = ON",
        f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}",
        "PRAGMA temp_store = MEMORY",
        f"PRAGMA cache_size = {-16000 if writer else -2000}",
    ]
    if max_page_count is not None:
        stmts.append(f"PRAGMA max_page_count = {int(max_page_count)}")
    if writer:
        # The writer checkpoints itself (storage.sqlite.writer): SQLite's automatic checkpoint
        # would run inside COMMIT and swallow an fsync error.
        stmts.append("PRAGMA wal_autocheckpoint = 0")
    else:
        stmts.append("PRAGMA query_only = ON")
    return stmts


def apply_pragmas(
    conn: sqlite3.Connection,
    *,
    synchronous: Synchronous,
    busy_timeout_ms: int,
    max_page_count: int | None = None,
    writer: bool,
) -> None:
    for stmt in pragma_statements(
        synchronous=synchronous,
        busy_timeout_ms=busy_timeout_ms,
        max_page_count=max_page_count,
        writer=writer,
    ):
        conn.execute(stmt).fetchall()


def create_private(path: Path) -> None:
    """Create the database file with mode 0600 before SQLite opens it: SQLite gives the -wal and
    -shm files the same mode as the database file."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
    os.close(fd)


def restrict_companions(path: Path) -> None:
    """chmod the database and its -wal/-shm files to 0600 if they exist (belt and braces for a
    database created by something else)."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", FILE_MODE)
