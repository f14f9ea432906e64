"""Placeholder until the dashboard pages land (owned by the dashboard work)."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute


def routes(service: Any) -> list[BaseRoute]:
    return []
