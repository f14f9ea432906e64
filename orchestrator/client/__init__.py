"""The remote side: the socket client, the ``wf`` CLI and its tables. Imports ``api/`` only,
so a client never loads a database driver or the executor."""

from __future__ import annotations

from orchestrator.client.client import Client, DaemonUnreachable, RemoteError

__all__ = ["Client", "DaemonUnreachable", "RemoteError"]
