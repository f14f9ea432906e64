"""The run page's timeline: one bar per step attempt, retry backoff, sleep, wait, child run and
compensation, drawn to scale as SVG on the server (no chart library in the browser).

:func:`bars` turns a run detail (what ``get`` returns) into rows; :func:`svg` draws them.
Open-ended bars (a running attempt, a wait not yet resolved) end at ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any, Final

LABEL_WIDTH: Final = 230
CHART_WIDTH: Final = 900
ROW: Final = 22
MIN_BAR: Final = 3.0
WAIT_KINDS: Final = {"EVENT": "wait", "SIGNAL": "wait", "MANUAL": "wait", "DATETIME": "sleep",
                     "RUN": "child"}


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    kind: str  # css class suffix: completed failed running backoff sleep wait child compensation
    start: float
    end: float
    title: str


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _wait_label(wp: dict[str, Any]) -> str:
    kind = wp.get("kind")
    if kind == "EVENT":
        return f"wait event {wp.get('event_type')}"
    if kind == "SIGNAL":
        return f"wait signal {wp.get('signal')}"
    if kind == "MANUAL":
        return f"wait token {wp.get('token_id') or ''}".rstrip()
    if kind == "DATETIME":
        return "sleep"
    if kind == "RUN":
        return "child run"
    return f"wait {kind}"


def _retry_of(wp: dict[str, Any]) -> str | None:
    """The step a retry backoff waits for: the runtime names those ``retry:<step>:<attempt>``
    (a durable DATETIME waitpoint, so a restart resumes the backoff on time)."""
    wp_id = str(wp.get("waitpoint_id") or "")
    if wp.get("kind") != "DATETIME" or not wp_id.startswith("retry:"):
        return None
    return wp_id[len("retry:"):].rpartition(":")[0] or None


def bars(detail: dict[str, Any], now: float) -> list[Bar]:
    out: list[Bar] = []
    waitpoints = list(detail.get("waitpoints") or ())
    backed_off = {step for step in map(_retry_of, waitpoints) if step is not None}
    for step in detail.get("steps") or ():
        attempts = step.get("attempts") or [
            {"attempt": step.get("attempt"), "status": step.get("status"),
             "started_at": step.get("started_at"), "finished_at": step.get("finished_at"),
             "error": step.get("error")}]
        previous_end: float | None = None
        for attempt in attempts:
            start = _num(attempt.get("started_at"))
            if start is None:
                continue
            end = _num(attempt.get("finished_at"))
            status = str(attempt.get("status") or "running")
            label = f"{step.get('step_id')} #{attempt.get('attempt')}"
            if (previous_end is not None and start > previous_end
                    and step.get("step_id") not in backed_off):  # no backoff waitpoint: the gap
                out.append(Bar(f"{step.get('step_id')} backoff", "backoff", previous_end, start,
                               f"retry backoff {start - previous_end:.3f}s"))
            kind = status if status in ("completed", "failed") else "running"
            title = f"{label}: {status}"
            if attempt.get("error"):
                title += f" ({_short(attempt['error'])})"
            out.append(Bar(label, kind, start, end if end is not None else now, title))
            previous_end = end
    for wp in waitpoints:
        start = _num(wp.get("registered_at"))
        if start is None:
            continue
        end = _num(wp.get("resolved_at"))
        status = str(wp.get("status"))
        if end is None:
            end = now if status == "waiting" else _num(wp.get("due_at")) or now
        kind = WAIT_KINDS.get(str(wp.get("kind")), "wait")
        if status == "cancelled":
            kind = "cancelled"
        label = _wait_label(wp)
        retry_of = _retry_of(wp)
        if retry_of is not None:
            kind, label = "backoff", f"{retry_of} backoff"
        out.append(Bar(label, kind, start, end, f"{label}: {status}"))
    for comp in detail.get("compensations") or ():
        at = _num(comp.get("finished_at"))
        if at is None:
            continue
        out.append(Bar(f"undo {comp.get('step_id')}", "compensation", at, at,
                       f"compensation of {comp.get('step_id')}: {comp.get('status')}"))
    out.sort(key=lambda b: b.start)
    return out


def _short(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("message") or value.get("type") or value
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def svg(detail: dict[str, Any], now: float) -> str:
    rows = bars(detail, now)
    if not rows:
        return '<p class="muted">Nothing has run yet.</p>'
    start = min([b.start for b in rows] + [_num(detail.get("started_at")) or rows[0].start])
    end = max(max(b.end for b in rows), _num(detail.get("finished_at")) or start)
    span = max(end - start, 1e-3)
    scale = CHART_WIDTH / span
    height = ROW * (len(rows) + 1) + 6
    width = LABEL_WIDTH + CHART_WIDTH + 10
    parts = [f'<svg class="timeline" role="img" aria-label="run timeline" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    for i in range(5):  # a light scale: five ticks across the run
        x = LABEL_WIDTH + CHART_WIDTH * i / 4
        parts.append(f'<line class="axis" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - ROW}"/>')
        anchor = "end" if i == 4 else "start"  # the last label stays inside the chart
        parts.append(f'<text x="{x + 2:.1f}" y="{height - 6}" text-anchor="{anchor}">'
                     f'+{span * i / 4:.3g}s</text>')
    for i, bar in enumerate(rows):
        y = i * ROW + 4
        x = LABEL_WIDTH + (bar.start - start) * scale
        w = max((bar.end - bar.start) * scale, MIN_BAR)
        parts.append(
            f'<g class="bar" data-kind="{bar.kind}"><title>{escape(bar.title)}</title>'
            f'<text x="4" y="{y + 13}">{escape(bar.label[:34])}</text>'
            f'<rect class="bar-{bar.kind}" x="{x:.1f}" y="{y}" width="{w:.1f}" '
            f'height="{ROW - 6}" rx="2"/></g>')
    parts.append("</svg>")
    return "".join(parts)
