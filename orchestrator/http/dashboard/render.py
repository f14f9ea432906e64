"""Jinja2 for the dashboard: the template environment (autoescaped) and its filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jinja2
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse

HERE: Final = Path(__file__).parent
STATIC: Final = HERE / "static"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min"


def pretty(value: Any) -> str:
    return orjson.dumps(value, default=repr, option=orjson.OPT_INDENT_2).decode()


def compact(value: Any) -> str:
    text = orjson.dumps(value, default=repr).decode()
    return text if len(text) <= 60 else text[:57] + "..."


_env.filters.update(when=when, seconds=seconds, pretty=pretty, compact=compact)


def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render a template; ``root`` is the app's mount prefix for every link."""
    context.setdefault("root", request.scope.get("root_path", ""))
    html = _env.get_template(name).render(**context)
    return HTMLResponse(html, status, headers={"Cache-Control": "no-store"})
