"""Shared test harness: the test launcher of the daemon (crash points, mutants)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def launcher_path() -> str:
    """``PYTHONPATH`` for a daemon started through ``python -m tests.harness.launch``."""
    extra = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(REPO), *([extra] if extra else [])])
