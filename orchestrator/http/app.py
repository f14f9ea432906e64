"""``create_app``: the daemon's ASGI app (SPEC §12), also mountable by an embedding app::

    app.mount("/wf", create_app(orch, HttpSettings(token="...")))

Routes, in order: ``/healthz``, ``/readyz``, ``/metrics``, ``/login``, ``/logout``,
``/api/v1/...``, then the dashboard's routes at ``/``. Every request passes
:class:`~orchestrator.http.security.SecurityMiddleware` first.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator.api import service as api_service
from orchestrator.http import dashboard, security
from orchestrator.http.api import Api
from orchestrator.http.daemons import Daemons, this_process
from orchestrator.http.history import History
from orchestrator.http.metrics import CONTENT_TYPE, CountingMiddleware, Metrics
from orchestrator.http.settings import HttpSettings

Readiness = Callable[[], Awaitable[bool]]

_LOGIN_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wf: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto">
<h1>wf dashboard</h1>
<p>{message}</p>
<form method="get" action="{action}">
<input type="hidden" name="next" value="{next}">
<label>Token <input type="password" name="token" autofocus required size="40"></label>
<button type="submit">Log in</button>
</form>
<p>Run <code>wf dashboard</code> on the daemon's host to get a login link.</p>
</body></html>
"""


def safe_next(value: str | None) -> str:
    """A local path to go to after login (never another site: no ``//`` or scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def create_app(
    service: api_service.Service,
    settings: HttpSettings,
    *,
    readiness: Readiness | None = None,
    metrics: Metrics | None = None,
    history: History | None = None,
    daemons: Daemons | None = None,
) -> Starlette:
    """The HTTP app over ``service`` (the engine in process). ``readiness`` answers
    ``/readyz`` (default: ready); ``metrics`` feeds ``/metrics`` (default: an empty registry);
    ``history`` holds the health page's samples (default: sampled from ``metrics`` when the
    page is viewed); ``daemons`` lists the daemons page (default: this process)."""
    metrics = metrics or Metrics()
    history = history or History(metrics.figures, clock=metrics.clock)
    daemons = daemons or this_process(clock=metrics.clock)
    api = Api(service, settings.max_request_bytes)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            ready = await readiness() if readiness is not None else True
        except Exception as exc:  # not ready, and why; no trace
            return JSONResponse({"status": "unavailable", "reason": type(exc).__name__}, 503)
        if not ready:
            return JSONResponse({"status": "unavailable"}, 503)
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    async def login(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        target = safe_next(request.query_params.get("next"))
        token = request.query_params.get("token")
        if token is None or not secrets.compare_digest(token.encode(), settings.token.encode()):
            message = "Paste the daemon's HTTP token." if token is None else "Wrong token."
            page = _LOGIN_PAGE.format(message=html.escape(message),
                                      action=html.escape(f"{root}/login"),
                                      next=html.escape(target))
            return HTMLResponse(page, 200 if token is None else 401)
        # The token leaves the URL at once: the cookie carries the session from here on.
        response = RedirectResponse(root + target, 303)
        path = root or "/"
        response.set_cookie(security.SESSION_COOKIE, settings.session_value, path=path,
                            httponly=True, samesite="strict")
        response.set_cookie(security.CSRF_COOKIE, secrets.token_urlsafe(24), path=path,
                            httponly=False, samesite="strict")
        return response

    async def logout(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        response = RedirectResponse(f"{root}/login", 303)
        for name in (security.SESSION_COOKIE, security.CSRF_COOKIE):
            response.delete_cookie(name, path=root or "/")
        return response

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/login", login, methods=["GET"]),
        Route("/logout", logout, methods=["GET", "POST"]),
        *api.routes(),
        *dashboard.routes(service, history=history, daemons=daemons),
    ]
    return Starlette(routes=routes,
                     middleware=[Middleware(CountingMiddleware, metrics=metrics),
                                 Middleware(security.SecurityMiddleware, settings=settings)])
