"""The events page (SPEC §12): recent stored events with what each resolved and started, a
form to send one, and the dry run ("which runs would this event resolve") that the run page's
resolve forms use too. Everything goes through the ``events`` and ``send_event`` methods."""

from __future__ import annotations

import contextlib
from typing import Any, Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from orchestrator.api import errors, protocol
from orchestrator.api import service as api
from orchestrator.http.dashboard.pages import json_field, read_form
from orchestrator.http.dashboard.render import page

PAGE_SIZE: Final = 50


class EventPages:
    def __init__(self, service: api.Service) -> None:
        self.service = service

    async def call(self, method: str, **params: Any) -> Any:
        return await self.service.dispatch(protocol.parse_params(protocol.METHODS[method],
                                                                 params))

    async def events_data(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        query = {k: q[k].strip() for k in ("type", "before") if q.get(k, "").strip()}
        params: dict[str, Any] = {**query, "limit": PAGE_SIZE}
        if "before" in params:  # the pager's epoch seconds (a bare string reads as "ago")
            with contextlib.suppress(ValueError):
                params["before"] = float(params["before"])
        events: list[dict[str, Any]] = []
        error = next_qs = None
        try:
            result = await self.call("events", **params)
            events = list(result.get("events") or [])
            if result.get("next_before") is not None:
                next_qs = urlencode({**query, "before": repr(result["next_before"])})
        except errors.ServiceError as err:
            error = err.message
        filters = {k: v for k, v in query.items() if k != "before"}
        return {"events": events, "error": error, "filters": filters, "next_qs": next_qs,
                "first_qs": urlencode(filters) if "before" in query else None}

    async def events_page(self, request: Request) -> Response:
        return page(request, "events.html", nav="events", flash=None,
                    **await self.events_data(request))

    async def send(self, request: Request) -> Response:
        """Send the form's event; answers with the list again (the new event on top)."""
        try:
            form = await read_form(request)
            result = await self.call("send_event", type=form.get("type", ""),
                                     payload=json_field(form, "payload"),
                                     event_id=form.get("event_id") or None)
            flash = ("ok", f"event {result.get('event_id')} sent: resolved "
                           f"{result.get('resolved')}, started {len(result.get('started') or ())}")
        except errors.ServiceError as err:
            flash = ("error", f"send event: {err.message}")
        return page(request, "_events_table.html", flash=flash,
                    **await self.events_data(request))

    async def dry_run(self, request: Request) -> Response:
        """Which runs the form's event would resolve or start, sending nothing."""
        try:
            form = await read_form(request)
            result = await self.call("send_event", type=form.get("type", ""),
                                     payload=json_field(form, "payload"),
                                     event_id=form.get("event_id") or None, dry_run=True)
            return page(request, "_event_dry_run.html", result=result, error=None,
                        type=form.get("type", ""))
        except errors.ServiceError as err:
            return page(request, "_event_dry_run.html", result=None, error=err.message, type="")
