"""Daemon-side mutants for the soak and fuzz checks: deliberate bugs that prove those checks can
fail. A test loads this as an extra workflow module (``workflows.modules``) and names the mutant
in ``WF_REL_MUTANT`` in the daemon's environment; it patches the running daemon at import. With
the variable unset it does nothing. (tests/harness/launch.py has no leak or wrong-reply mutants, and
the engine packages are not ours to edit.)

- ``FD_LEAK``: every accepted connection leaks a dup of its socket fd.
- ``RSS_LEAK``: every request line keeps 16 KiB alive for good.
- ``SLOW_COMMITS``: each write batch sleeps 1 ms more per 10 s of uptime (latency creeps up).
- ``WRONG_CODE``: every 5,000th error reply carries ``INTERNAL`` instead of its code.
"""

from __future__ import annotations

import os
import time
from typing import Any

MUTANT = os.environ.get("WF_REL_MUTANT", "")
_KEPT: list[bytearray] = []
_LEAKED_FDS: list[int] = []
_BORN = time.monotonic()


def _install() -> None:
    from orchestrator.api import errors, protocol
    from orchestrator.daemon import server
    from storage.sqlite import writer

    if MUTANT == "FD_LEAK":
        handle = server.SocketServer._handle

        async def leaky_handle(self: Any, reader: Any, writer_: Any) -> None:
            sock = writer_.get_extra_info("socket")
            if sock is not None:
                _LEAKED_FDS.append(os.dup(sock.fileno()))
            await handle(self, reader, writer_)

        server.SocketServer._handle = leaky_handle  # type: ignore[method-assign,assignment]
    elif MUTANT == "RSS_LEAK":
        decode = protocol.decode_line

        def hoarding_decode(line: bytes) -> Any:
            _KEPT.append(bytearray(16_384))
            return decode(line)

        protocol.decode_line = hoarding_decode
    elif MUTANT == "SLOW_COMMITS":
        run_batch = writer.Writer._run_batch

        def slow_batch(self: Any, conn: Any, batch: Any) -> Any:
            time.sleep((time.monotonic() - _BORN) / 10 / 1000)
            return run_batch(self, conn, batch)

        writer.Writer._run_batch = slow_batch  # type: ignore[method-assign]
    elif MUTANT == "WRONG_CODE":
        error_line = protocol.error_line
        count = [0]

        def wrong_error_line(id: Any, error: errors.ServiceError) -> bytes:
            count[0] += 1
            if count[0] % 5000 == 0:
                error = errors.InternalError("mutant WRONG_CODE")
            return error_line(id, error)

        protocol.error_line = wrong_error_line
    elif MUTANT:
        raise ValueError(f"WF_REL_MUTANT: unknown mutant {MUTANT!r}")


_install()
