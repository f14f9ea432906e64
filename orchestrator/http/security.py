"""The gate in front of every HTTP route: Host check, token auth, CSRF (SPEC §12).

- Host: the Host header's name must be an allowed one (DNS rebinding), else 400.
- Auth: ``Authorization: Bearer <token>`` or the HttpOnly ``wf_session`` cookie set by
  ``/login``. ``/healthz``, ``/readyz``, ``/login``, ``/logout`` and ``/static/`` need none.
  Unauthenticated: 401 JSON for ``/api`` and ``/metrics``, else a redirect to ``/login``.
- CSRF (double submit): a POST/PUT/PATCH/DELETE authenticated by the cookie must carry
  ``X-WF-CSRF`` equal to the ``wf_csrf`` cookie, else 403. Bearer requests need none (a
  browser never adds that header by itself).

A pure ASGI middleware, so server-sent event streams pass through untouched.
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from typing import Final
from urllib.parse import quote

from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.http.settings import HttpSettings

SESSION_COOKIE: Final = "wf_session"
CSRF_COOKIE: Final = "wf_csrf"
CSRF_HEADER: Final = "x-wf-csrf"
PUBLIC_PREFIXES: Final = ("/healthz", "/readyz", "/login", "/logout", "/static/", "/favicon")
JSON_PREFIXES: Final = ("/api/", "/metrics")
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def error_body(code: str, message: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "data": {}}}


def host_name(host: str) -> str:
    """The name of a Host header value, without port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def local_path(scope: Scope) -> str:
    """The path below the app's mount point (an embedding app may mount us at a prefix)."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, settings: HttpSettings) -> None:
        self.app = app
        self.settings = settings
        self._bearer = f"bearer {settings.token}".encode()
        self._session = settings.session_value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        response = self.check(scope)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> Response | None:
        """None when the request may go on, else the refusal."""
        headers = dict(scope.get("headers", ()))
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        allowed = self.settings.allowed_hosts
        if "*" not in allowed and host not in allowed:
            return JSONResponse(error_body("BAD_HOST", f"Host {host!r} is not allowed"), 400)
        path = local_path(scope)
        if path.startswith(PUBLIC_PREFIXES):
            return None
        auth = headers.get(b"authorization", b"")
        if auth and hmac.compare_digest(auth[:7].lower() + auth[7:], self._bearer):
            return None
        cookies = parse_cookies(headers.get(b"cookie", b"").decode("latin-1"))
        session = cookies.get(SESSION_COOKIE, "")
        if not (session and hmac.compare_digest(session, self._session)):
            if auth or path.startswith(JSON_PREFIXES) or scope["type"] != "http":
                return JSONResponse(
                    error_body("UNAUTHORIZED", "missing or bad token: send "
                               "'Authorization: Bearer <token>' or log in at /login"),
                    401, headers={"WWW-Authenticate": "Bearer"},
                )
            root = scope.get("root_path", "")
            return RedirectResponse(f"{root}/login?next={quote(path)}", 303)
        if scope.get("method", "GET") not in SAFE_METHODS:
            csrf = cookies.get(CSRF_COOKIE, "")
            sent = headers.get(CSRF_HEADER.encode(), b"").decode("latin-1")
            if not (csrf and hmac.compare_digest(csrf, sent)):
                return JSONResponse(
                    error_body("CSRF", f"missing or wrong {CSRF_HEADER} header (it must equal "
                               f"the {CSRF_COOKIE} cookie)"), 403)
        return None


def parse_cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header is no cookie, never a 500
        return {}
    return {k: m.value for k, m in jar.items()}
