"""The durable ledger the crash checks' step bodies write: one line per step run, appended and
fsynced before the step returns, so a check can count runs across daemon incarnations."""

from __future__ import annotations

import os


def append_durably(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
