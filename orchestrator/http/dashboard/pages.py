"""The dashboard's pages, fragments and actions (SPEC §12). Every read and every action goes
through the api :class:`~orchestrator.api.service.Service`; actions are POSTs (htmx adds the
CSRF header) and answer with the fragment they changed, with a line saying what happened."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qs, quote, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from orchestrator.api import errors, protocol
from orchestrator.api import service as api
from orchestrator.http.dashboard import timeline
from orchestrator.http.dashboard.render import page, when

PAGE_SIZE: Final = 50
RUN_ACTIONS: Final = ("cancel", "pause", "resume", "retry")
SCHEDULE_ACTIONS: Final = ("pause", "resume", "trigger", "backfill")
LIST_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(api.List))
SEARCHABLE: Final = "search" in LIST_FIELDS
"""Full-text search is offered only when ``list`` takes ``search`` (the search index)."""
FILTERS: Final = ("status", "workflow_id", "tag", "since", "search")
"""The list's filters; the bulk form applies the same ones (``bulk``'s filter takes each)."""
SINCE: Final = ("15m", "1h", "24h", "7d", "30d")
"""The "created within" choices (``list``/``bulk`` read a duration as that long ago)."""
MAX_FORM_BYTES: Final = 1 << 20


class Pages:
    def __init__(self, service: api.Service, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.clock = clock

    # --- runs ---------------------------------------------------------------------------------

    def list_query(self, request: Request) -> dict[str, str]:
        """The list filters of the query string that the page keeps in its links."""
        q = request.query_params
        keep = {k: q[k].strip() for k in (*FILTERS, "cursor", "until") if q.get(k, "").strip()}
        if not SEARCHABLE:
            keep.pop("search", None)
        return keep

    async def runs_data(self, request: Request) -> dict[str, Any]:
        query = self.list_query(request)
        params: dict[str, Any] = {k: v for k, v in query.items() if k in LIST_FIELDS}
        params["limit"] = PAGE_SIZE
        if "until" in params:  # the pager's epoch seconds (a bare string reads as "ago")
            with contextlib.suppress(ValueError):
                params["until"] = float(params["until"])
        error = None
        runs: list[dict[str, Any]] = []
        next_query = None
        try:
            result = await self.service.dispatch(protocol.parse_params(protocol.METHODS["list"],
                                                                       params))
            runs = list(result.get("runs") or [])
            cursor = result.get("next_cursor")
            if cursor:
                next_query = {**query, "cursor": cursor}
            elif "cursor" not in LIST_FIELDS and len(runs) >= PAGE_SIZE:
                # No cursor in this list method: page on "created before the last one shown".
                next_query = {**query, "until": runs[-1]["created_at"]}
        except errors.ServiceError as err:
            error = err.message
        filters = {k: v for k, v in query.items() if k not in ("cursor", "until")}
        return {"runs": runs, "error": error, "query": query, "filters": filters,
                "qs": urlencode(query),
                "next_qs": urlencode(next_query) if next_query else None,
                "first_qs": urlencode(filters) if query != filters else None}

    async def runs_page(self, request: Request) -> Response:
        search = request.query_params.get("search", "").strip()
        if search and not SEARCHABLE:
            # No full-text index here: the box still finds a run by its id.
            try:
                await self.service.dispatch(api.Get(search))
                root = request.scope.get("root_path", "")
                return RedirectResponse(f"{root}/runs/{search}", 303)
            except errors.ServiceError:
                pass
        data = await self.runs_data(request)
        if search and not SEARCHABLE:
            data["error"] = (f"no run with id {search!r} (full-text search needs the search "
                             "index, which this daemon does not have)")
        workflows = await self.service.dispatch(api.Workflows())
        return page(request, "runs.html", nav="runs", statuses=api.RUN_STATUSES, since=SINCE,
                    workflows=[w["id"] for w in workflows.get("workflows", [])],
                    search=search, searchable=SEARCHABLE, **data)

    async def runs_table(self, request: Request) -> Response:
        return page(request, "_runs_table.html", **await self.runs_data(request))

    # --- one run ------------------------------------------------------------------------------

    async def run_context(self, run_id: str) -> dict[str, Any]:
        detail = await self.service.dispatch(api.Get(run_id))
        now = self.clock()
        waiting = [w for w in detail.get("waitpoints") or () if w.get("status") == "waiting"]
        return {"run": detail, "svg": timeline.svg(detail, now), "waiting": waiting,
                "events": [w for w in waiting if w.get("kind") == "EVENT"],
                "signals": [w for w in waiting if w.get("kind") == "SIGNAL"],
                "tokens": [w for w in waiting if w.get("kind") == "MANUAL"],
                "waits_for": [waits_for(w) for w in waiting],
                "terminal": detail.get("status") in api.TERMINAL_STATUSES}

    async def run_page(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            context = await self.run_context(run_id)
        except errors.NotFound as err:
            return page(request, "missing.html", 404, nav="runs", message=err.message)
        return page(request, "run.html", nav="runs", flash=None, **context)

    async def run_body(self, request: Request, flash: tuple[str, ...] | None = None) -> Response:
        run_id = request.path_params["run_id"]
        try:
            context = await self.run_context(run_id)
        except errors.NotFound as err:
            return page(request, "_flash.html", 404, flash=("error", err.message))
        return page(request, "_run_body.html", flash=flash, **context)

    async def run_action(self, request: Request) -> Response:
        """cancel, pause, resume, retry, replay (a check), signal, token: the run's body again,
        with a line saying what happened (or why not)."""
        run_id = request.path_params["run_id"]
        action = request.path_params["action"]
        flash: tuple[str, ...]
        try:
            form = await read_form(request)
            done = await self.act(run_id, action, form)
            text, link = (done, None) if isinstance(done, str) else done
            flash = ("ok", f"{action}: {text}") + ((link,) if link else ())
        except errors.ServiceError as err:
            flash = ("error", f"{action}: {err.message}")
        return await self.run_body(request, flash)

    async def act(self, run_id: str, action: str,
                  form: dict[str, str]) -> str | tuple[str, str]:
        """What was done, in words (and a page to go to, for a fork)."""
        if action == "cancel":
            await self.service.dispatch(api.Cancel(
                run_id, compensate=form.get("compensate", "true") != "false",
                reason=form.get("reason") or "cancelled from the dashboard"))
        elif action == "pause":
            await self.service.dispatch(api.Pause(run_id))
        elif action == "resume":
            await self.service.dispatch(api.Resume(run_id))
        elif action == "retry":
            await self.call("retry", run_id=run_id, mode=form.get("mode", "resume"))
        elif action == "replay":
            result = await self.service.dispatch(api.Replay(run_id))
            if result.get("diverged"):
                return f"diverges from the loaded code: {compact(result.get('detail'))}"
            return "the loaded code replays this run's journal without divergence"
        elif action == "signal":
            result = await self.call("signal", run_id=run_id, name=form.get("name", ""),
                                     payload=json_field(form, "payload"))
            return "delivered" if result.get("delivered") else "queued in the run's inbox"
        elif action == "token":
            await self.call("complete_token", token_id=form.get("token_id", ""),
                            payload=json_field(form, "payload"))
        elif action == "fork":
            params: dict[str, Any] = {k: form[k] for k in ("from_step", "reason") if form.get(k)}
            if form.get("input", "").strip():
                params["input"] = json_field(form, "input")
            new = (await self.call("fork", run_id=run_id, **params))["run_id"]
            return f"forked as {new}", f"/runs/{quote(new, safe='')}"
        elif action == "amend":
            await self.call("amend", run_id=run_id, step_id=form.get("step_id", ""),
                            output=json_field(form, "output"), reason=form.get("reason", ""))
            return "the step's result is replaced (retry with resume to continue from it)"
        else:
            raise errors.MethodNotFound(f"runs/{{run_id}}/actions/{action}")
        return "done"

    async def call(self, method: str, **params: Any) -> Any:
        """A request validated as the wire's would be (bad form input names its field)."""
        return await self.service.dispatch(protocol.parse_params(protocol.METHODS[method],
                                                                 params))

    async def send_event(self, request: Request) -> Response:
        try:
            form = await read_form(request)
            result = await self.call("send_event", type=form.get("type", ""),
                                     payload=json_field(form, "payload"))
            flash = ("ok", f"event {result.get('event_id')} sent: "
                           f"resolved {result.get('resolved')}")
        except errors.ServiceError as err:
            flash = ("error", f"send event: {err.message}")
        return await self.run_body(request, flash)

    async def bulk(self, request: Request) -> Response:
        """A bulk action on the list's filter: a dry run first (the count), whose answer holds
        the button that applies it."""
        try:
            form = await read_form(request)
            filter_ = {k: form[k] for k in FILTERS if form.get(k)}
            dry_run = form.get("dry_run", "true") != "false"
            result = await self.call("bulk", action=form.get("action", ""), filter=filter_,
                                     dry_run=dry_run)
            return page(request, "_bulk.html", action=form.get("action"), filter=filter_,
                        dry_run=dry_run, result=result, error=None)
        except errors.ServiceError as err:
            return page(request, "_bulk.html", error=err.message)

    # --- workflows and schedules --------------------------------------------------------------

    async def workflows_page(self, request: Request) -> Response:
        found = await self.service.dispatch(api.Workflows())
        return page(request, "workflows.html", nav="workflows",
                    workflows=found.get("workflows", []))

    async def schedules_data(self) -> dict[str, Any]:
        found = await self.service.dispatch(api.Schedules())
        return {"schedules": found.get("schedules", [])}

    async def schedules_page(self, request: Request) -> Response:
        return page(request, "schedules.html", nav="schedules", flash=None,
                    **await self.schedules_data())

    async def schedule_action(self, request: Request) -> Response:
        name = request.path_params["name"]
        action = request.path_params["action"]
        requests: dict[str, Callable[[str], api.Request[Any]]] = {
            "pause": api.SchedulePause, "resume": api.ScheduleResume,
            "trigger": api.ScheduleTrigger}
        try:
            if action == "backfill":
                form = await read_form(request)
                result = await self.call("schedule_backfill", name=name,
                                         start=form.get("start", ""), end=form.get("end", ""))
                flash = ("ok", f"backfill {name}: {len(result.get('runs') or ())} runs")
                return page(request, "_schedules_table.html", flash=flash,
                            **await self.schedules_data())
            make = requests.get(action)
            if make is None:
                raise errors.MethodNotFound(f"schedules/{{name}}/{action}")
            await self.service.dispatch(make(name))
            flash = ("ok", f"{action} {name}: done")
        except errors.ServiceError as err:
            flash = ("error", f"{action} {name}: {err.message}")
        return page(request, "_schedules_table.html", flash=flash,
                    **await self.schedules_data())


def waits_for(wp: dict[str, Any]) -> str:
    """What a waiting waitpoint needs, in words."""
    kind = wp.get("kind")
    timeout = f" (times out {when(wp['timeout_at'])})" if wp.get("timeout_at") else ""
    if kind == "EVENT":
        match = f" matching {compact(wp['match'])}" if wp.get("match") else ""
        return f"an event of type {wp.get('event_type')!r}{match}{timeout}"
    if kind == "SIGNAL":
        return f"the signal {wp.get('signal')!r}{timeout}"
    if kind == "MANUAL":
        return f"the token {wp.get('token_id')} to be completed{timeout}"
    if kind == "DATETIME":
        return f"the time {when(wp.get('due_at'))} (sleeping)"
    if kind == "RUN":
        return f"a child run to end{timeout}"
    return f"{kind}{timeout}"


def json_field(form: dict[str, str], name: str) -> Any:
    raw = form.get(name, "").strip() or "null"
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidParams(name, "JSON", repr(raw[:40])) from exc


def compact(value: Any) -> str:
    return orjson.dumps(value, default=repr).decode()


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (what htmx posts), last value per key; bounded in size."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise errors.RequestTooLarge(MAX_FORM_BYTES)
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}
