"""Who is asking: facts a front end knows about the caller of the request it serves.

The socket server sets :data:`PEER_UID` from the connection's SO_PEERCRED before it serves the
connection's requests (each request's task inherits it); the engine reads it where it keeps an
audit trail (``amend``). It is None in process and over HTTP, where there is no peer uid.
"""

from __future__ import annotations

from contextvars import ContextVar

PEER_UID: ContextVar[int | None] = ContextVar("wf_peer_uid", default=None)
