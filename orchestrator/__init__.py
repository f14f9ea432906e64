"""The daemon side: ``api`` (shared by every front end), ``engine``, ``daemon`` and ``client``.

The package face imports nothing heavy: ``orchestrator.Orchestrator`` is loaded on first use, so
``import orchestrator.client`` never pulls in storage or the executor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.daemon.compose import Orchestrator

__all__ = ["Orchestrator"]


def __getattr__(name: str) -> Any:
    if name == "Orchestrator":
        from orchestrator.daemon.compose import Orchestrator

        return Orchestrator
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
