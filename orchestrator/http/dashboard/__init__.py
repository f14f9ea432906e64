"""The dashboard (SPEC §12): server-rendered pages with htmx, mounted by
:func:`orchestrator.http.app.create_app` at ``/``.

Pages: ``/`` (runs), ``/runs/{run_id}``, ``/workflows``, ``/schedules``, ``/events``,
``/health`` (engine health charts), ``/daemons``. Fragments under
``/fragments/`` are what htmx swaps in; actions are POSTs (the CSRF header comes from
``static/app.js``); ``/live/...`` are the pages' server-sent-event streams.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from orchestrator.api import service as api
from orchestrator.http.daemons import Daemons
from orchestrator.http.dashboard.engine_pages import EnginePages
from orchestrator.http.dashboard.events import EventPages
from orchestrator.http.dashboard.live import Live
from orchestrator.http.dashboard.pages import Pages
from orchestrator.http.dashboard.render import STATIC
from orchestrator.http.history import History


def routes(service: api.Service, *, history: History, daemons: Daemons,
           live_interval: float | None = None) -> list[BaseRoute]:
    pages = Pages(service)
    events = EventPages(service)
    engine = EnginePages(history, daemons)
    live = Live(service) if live_interval is None else Live(service, live_interval)
    return [
        Route("/", pages.runs_page, methods=["GET"]),
        Route("/fragments/runs", pages.runs_table, methods=["GET"]),
        Route("/runs/{run_id}", pages.run_page, methods=["GET"]),
        Route("/fragments/runs/{run_id}", pages.run_body, methods=["GET"]),
        Route("/runs/{run_id}/actions/{action}", pages.run_action, methods=["POST"]),
        Route("/runs/{run_id}/event", pages.send_event, methods=["POST"]),
        Route("/bulk", pages.bulk, methods=["POST"]),
        Route("/workflows", pages.workflows_page, methods=["GET"]),
        Route("/schedules", pages.schedules_page, methods=["GET"]),
        Route("/schedules/{name}/{action}", pages.schedule_action, methods=["POST"]),
        Route("/events", events.events_page, methods=["GET"]),
        Route("/events/send", events.send, methods=["POST"]),
        Route("/events/dry-run", events.dry_run, methods=["POST"]),
        Route("/health", engine.health_page, methods=["GET"]),
        Route("/daemons", engine.daemons_page, methods=["GET"]),
        Route("/live/runs", live.runs, methods=["GET"]),
        Route("/live/runs/{run_id}", live.run, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
