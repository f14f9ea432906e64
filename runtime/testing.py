"""In-process test harness for workflows (no daemon)."""

from __future__ import annotations
