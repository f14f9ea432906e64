"""``wf daemon``: the daemon's life, top to bottom.

Start: load the config (refused → exit 2), configure logging, choose the event loop, take the
database lock, migrate, import workflows, recover runs, fire overdue timers, open the socket, log
``daemon.ready``. On SIGTERM/SIGINT: stop accepting, let in-flight steps finish up to
``daemon.shutdown_grace``, close storage (everything acknowledged is already committed), exit 0.
An I/O error on commit is fail-stop: log it and exit at once, so recovery reads only what is on
disk. Start-up refusals (lock held, database too new, live socket) exit 1 with one log line.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

import storage
from orchestrator import logs
from orchestrator.config import Config, ConfigError, load_config
from orchestrator.daemon.compose import Hooks, Orchestrator
from orchestrator.daemon.http import build_http
from orchestrator.daemon.loader import WorkflowImportError
from orchestrator.daemon.lockfile import DatabaseLocked
from orchestrator.daemon.server import SocketInUse, SocketPathError, SocketServer

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2
EXIT_FAIL_STOP = 70
# File descriptors kept for storage, logs, the thread pool and the event loop itself.
FD_RESERVE = 64


def _raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run_daemon(config_path: str | None, hooks: Hooks | None = None) -> int:
    """Run the daemon in the foreground; return its exit code. ``hooks`` are for test
    launchers only (crash points, mutants): production passes none."""
    path = Path(config_path or "config.toml")
    try:
        cfg = load_config(path) if path.exists() or config_path else Config.default(Path.cwd())
    except ConfigError as exc:
        print(f'{{"event": "daemon.refused", "level": "error", "reason": {str(exc)!r}}}'
              .replace("'", '"'), file=sys.stderr)
        return EXIT_CONFIG
    hooks = hooks or Hooks()
    if hooks.adjust_config is not None:
        cfg = hooks.adjust_config(cfg)
    logs.configure_logging(cfg.logging)
    if cfg.daemon.event_loop == "uvloop":
        try:
            import uvloop

            return int(uvloop.run(_serve(cfg, hooks)))
        except ImportError:
            structlog.get_logger("wf.daemon").warning(
                "daemon.uvloop_unavailable", detail="falling back to asyncio"
            )
    return asyncio.run(_serve(cfg, hooks))


async def _serve(cfg: Config, hooks: Hooks) -> int:
    log = structlog.get_logger("wf.daemon")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    orch = Orchestrator(cfg, configure_logging=False, instrument=hooks.instrument,
                        wrap_storage=hooks.wrap_storage)
    try:
        await orch.__aenter__()
    except (DatabaseLocked, storage.SchemaTooNew, storage.StorageLocked) as exc:
        log.error("daemon.refused", reason=str(exc))
        return EXIT_REFUSED
    except (WorkflowImportError, ValueError) as exc:
        log.error("daemon.refused", reason=str(exc))
        return EXIT_REFUSED
    fds = _raise_fd_limit()
    backlog = max(16, min(max(1024, cfg.daemon.max_active_runs), fds // 4))
    server = SocketServer(
        orch,
        cfg.daemon.socket,
        allowed_uids=cfg.daemon.allowed_uids,
        max_request_bytes=cfg.daemon.max_request_bytes,
        # asyncio accepts up to `backlog` sockets per wake-up before any of them is served:
        # keep that well inside the fd limit, and refuse connections past the limit's reserve.
        backlog=backlog,
        max_connections=max(16, fds - FD_RESERVE - 2 * backlog),
        instrument=hooks.instrument,
    )
    try:
        await server.start()
    except (SocketInUse, SocketPathError) as exc:
        log.error("daemon.refused", reason=str(exc))
        await orch.close()
        return EXIT_REFUSED
    try:
        http = build_http(orch, server)
        if http is not None:
            await http.start()
    except OSError as exc:  # the port is taken, or the token file cannot be written
        log.error("daemon.refused", reason=f"http: {exc}")
        server.stop_accepting()
        await orch.close()
        await server.close()
        return EXIT_REFUSED
    _tune_gc()
    log.info(
        "daemon.ready",
        socket=str(cfg.daemon.socket),
        database=orch.storage.capabilities().location,
        backend=orch.storage.capabilities().backend,
        synchronous=cfg.storage.synchronous,
        in_force=orch.storage.durability(),  # read back from the database, not the config
        event_loop=type(loop).__module__.split(".")[0],
        pid=os.getpid(),
        http=f"http://{_url_host(http.host)}:{http.port}/" if http is not None else None,
    )
    stopping = loop.create_task(stop.wait(), name="signals")
    fatal = orch.fatal
    waits: list[asyncio.Future[Any]] = [stopping, fatal]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if fatal.done():
        log.critical("daemon.fail_stop", error=repr(orch.fatal.result()))
        logs.flush()  # os._exit skips atexit, where buffered log lines are written otherwise
        os._exit(EXIT_FAIL_STOP)  # no cleanup: nothing more may be written after an I/O error
    stopping.cancel()
    log.info("daemon.stopping", grace=cfg.daemon.shutdown_grace)
    server.stop_accepting()
    if http is not None:
        await http.close()  # ends open event streams before the engine goes
    await orch.close()
    await server.close()
    log.info("daemon.stopped")
    return EXIT_OK


# Allocations (net) between two young-generation collections; CPython's default is 700.
GC_GEN0_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Keep what start-up loaded out of the cyclic collector, and run it less often.

    Modules, workflows and config live as long as the daemon, yet every full collection walked
    them again, and with 1000 runs in flight the collector cost about as much CPU per step as
    the steps themselves (docs/performance.md, "Body loop cost after issue 15"). Ended runs are
    freed by reference counting, so collecting less often holds back little memory.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
