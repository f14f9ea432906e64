"""The daemon: actors, scheduler, resolution, socket server, client, CLI, config and logs."""

from __future__ import annotations

from orchestrator.orchestrator import Orchestrator

__all__ = ["Orchestrator"]
