"""One daemon per database: an exclusive ``fcntl`` lock on ``<storage.path>.lock``."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class DatabaseLocked(RuntimeError):
    """Another process holds the database lock."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(
            f"database {path} is in use by another daemon (pid {holder or 'unknown'} holds "
            f"{path}.lock); stop it first or use another storage.path"
        )
        self.path = path
        self.holder = holder


class DatabaseLock:
    @staticmethod
    @contextlib.contextmanager
    def acquire(db_path: Path) -> Iterator[None]:
        """Hold the lock for the life of the block; the kernel drops it if the process dies."""
        lock_path = Path(f"{db_path}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise DatabaseLocked(Path(db_path), holder) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
