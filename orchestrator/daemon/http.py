"""The daemon's HTTP side (SPEC §12): the app over the composed engine, its metrics hooked onto
the engine's status feed, and uvicorn on the daemon's loop. Off when ``http.listen`` is ""."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog

from orchestrator.daemon.compose import Orchestrator, package_version
from orchestrator.daemon.server import SocketServer
from orchestrator.http.app import create_app
from orchestrator.http.daemons import registered, this_process
from orchestrator.http.history import History
from orchestrator.http.metrics import Count, LabelledGauge, Metrics, Tallied
from orchestrator.http.server import HttpServer
from orchestrator.http.settings import HttpSettings

log = structlog.get_logger("wf.http")


def _file_size(path: str) -> float | None:
    try:
        return float(os.stat(path).st_size)
    except OSError:
        return None


def gauges(orch: Orchestrator, socket: SocketServer | None) -> dict[str, float | None]:
    """In-memory counts only (a scrape must not scan a table)."""
    engine = orch.engine
    actors = engine.supervisor.stats()
    timers = engine.timers.stats()
    writer: Any = getattr(engine.storage, "stats", None)
    out: dict[str, float | None] = {
        "active_actors": actors.active_actors,
        "warm_runs": actors.warm_runs,
        "slots_free": actors.slots_free,
        "slot_queue_depth": actors.runs_queued,
        "actors_started": actors.actors_started,
        "actor_failures": actors.actor_failures,
        "paused_runs": engine.holds.paused_runs,
        "change_followers": engine.supervisor.changes.followers,
        "timers_fired": timers.fired,
        "timer_lag_seconds_total": timers.lag_total,
        "timer_lag_seconds_max": timers.lag_max,
    }
    # File sizes only where the database is a local file (not on a PostgreSQL server).
    db_file = engine.storage.capabilities().file
    out["db_bytes"] = _file_size(db_file) if db_file else None
    out["wal_bytes"] = _file_size(f"{db_file}-wal") if db_file else None
    if callable(writer):
        w = writer()
        out.update(storage_batches=w.batches, storage_ops=w.ops,
                   storage_largest_batch=w.largest_batch, storage_queued=w.queued,
                   storage_failed_batches=w.failed_batches)
    if socket is not None:
        s = socket.stats()
        out.update(socket_requests_served=s.requests_served,
                   socket_connections_open=s.connections_open)
    return out


class WaitingCounts:
    """Waitpoints still waiting, by kind: one indexed count (the partial index of migration
    0011) every ``interval`` seconds, kept for the scrapes in between."""

    def __init__(self, orch: Orchestrator, interval: float = 15.0) -> None:
        self._storage = orch.engine.storage
        self.interval = interval
        self.counts: dict[str, int] = {}

    async def run(self) -> None:
        while True:
            try:
                self.counts = await self._storage.waiting_by_kind()
            except Exception as exc:  # a gauge is best effort; the engine reports storage
                log.warning("metrics.waiting_count_failed", error=repr(exc))
            await asyncio.sleep(self.interval)


def tallies(orch: Orchestrator, waiting: WaitingCounts | None = None
            ) -> list[Tallied | Count | LabelledGauge]:
    """The histograms (and the counters they imply) kept in memory by the engine and the
    storage writer, and the waiting waitpoints by kind."""
    t = orch.engine.supervisor.tallies
    out: list[Tallied | Count | LabelledGauge] = [
        Count("wf_events_received", "new events committed (re-sent event ids not counted)",
              t.events_received),
        Tallied("wf_step_duration_seconds", "step attempt durations", ("workflow", "outcome"),
                t.steps.snapshot(), "wf_step_attempts",
                "step attempts by workflow and outcome (ok, error)"),
        Tallied("wf_timer_lag_seconds", "timer firing lag (claimed at - due at)", ("kind",),
                t.timer_lag.snapshot(), "wf_timers_fired", "timers fired by kind "
                "(schedule: schedule fires; start: delayed starts; sleep, timeout, retry, ...)"),
    ]
    if waiting is not None:
        out.append(LabelledGauge("wf_waitpoints_waiting", "waitpoints waiting, by kind "
                                 f"(counted every {waiting.interval:g} s)", "kind",
                                 waiting.counts))
    commit_tally: Any = getattr(orch.engine.storage, "commit_tally", None)
    if callable(commit_tally):
        c = commit_tally()
        out += [
            Tallied("wf_storage_commit_seconds", "group commit latency (begin to COMMIT)", (),
                    {(): c.seconds.snapshot()}),
            Tallied("wf_storage_batch_requests", "requests per group commit", (),
                    {(): c.sizes.snapshot()}),
        ]
    return out


def build_http(orch: Orchestrator, socket: SocketServer | None = None) -> HttpServer | None:
    """The HTTP server for a composed orchestrator, not started; None when HTTP is off."""
    cfg = orch.config
    if cfg.http.host is None:
        return None
    waiting = WaitingCounts(orch)
    metrics = Metrics(lambda: gauges(orch, socket), clock=orch.clock, version=package_version(),
                      tallies=lambda: tallies(orch, waiting))
    orch.engine.supervisor.changes.observers.append(metrics.observe_change)

    async def ready() -> bool:
        # Recovery is done once the engine is open; a fail-stop means storage is not writable.
        return not orch.fatal.done()

    history = History(metrics.figures, clock=orch.clock)
    server: HttpServer | None = None

    def listening() -> str:  # the bound port (config port 0 picks one at start)
        port = server.port if server is not None else cfg.http.port
        return f"{cfg.http.host}:{port}"

    # The file path, or the PostgreSQL URL without its password.
    database = orch.engine.storage.capabilities().location
    keeper = orch.engine.lease
    if keeper is not None:
        keeper.http = lambda: f"http://{listening()}/"
        daemons = registered(keeper, database=database)
    else:
        daemons = this_process(version=package_version(), database=database,
                               socket_path=str(cfg.daemon.socket), http=listening,
                               clock=orch.clock)
    app = create_app(orch, HttpSettings.from_config(cfg), readiness=ready, metrics=metrics,
                     history=history, daemons=daemons)
    server = HttpServer(app, cfg.http.host, cfg.http.port, background=[history.run, waiting.run])
    return server
