"""Small line charts drawn as SVG on the server (the health page): one series against time,
the y axis from 0 to the series' maximum, the x axis the window the history keeps."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Final

WIDTH: Final = 380
HEIGHT: Final = 120
PAD_LEFT: Final = 46
PAD_BOTTOM: Final = 18
PAD_TOP: Final = 6


def number(value: float) -> str:
    """A short label: 0.25, 12.5, 3.4k, 1.2M."""
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e4:
        return f"{value / 1e3:.3g}k"
    if size >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.3g}"


def line(points: Sequence[tuple[float, float]], *, now: float, window: float, name: str,
         unit: str = "") -> str:
    """``points`` ``(at, value)`` over the last ``window`` seconds before ``now``."""
    label = f"{name} ({unit})" if unit else name
    head = (f'<svg class="chart" role="img" aria-label="{escape(label)}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'xmlns="http://www.w3.org/2000/svg">')
    shown = [(t, v) for t, v in points if now - window <= t <= now]
    plot_w = WIDTH - PAD_LEFT - 4
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    base = PAD_TOP + plot_h
    parts = [head,
             f'<line class="axis" x1="{PAD_LEFT}" y1="{base}" x2="{WIDTH - 4}" y2="{base}"/>',
             f'<text x="{PAD_LEFT}" y="{HEIGHT - 4}">-{window / 60:.0f} min</text>',
             f'<text x="{WIDTH - 4}" y="{HEIGHT - 4}" text-anchor="end">now</text>']
    if len(shown) < 2:
        parts.append(f'<text class="muted" x="{PAD_LEFT + 8}" y="{PAD_TOP + plot_h / 2}">'
                     'collecting samples…</text></svg>')
        return "".join(parts)
    top = max(v for _, v in shown) or 1.0
    parts.append(f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 10}" text-anchor="end">'
                 f'{escape(number(top))}</text>')
    parts.append(f'<text x="{PAD_LEFT - 4}" y="{base}" text-anchor="end">0</text>')
    parts.append(f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{WIDTH - 4}" '
                 f'y2="{PAD_TOP}"/>')
    coords = " ".join(
        f"{PAD_LEFT + plot_w * (1 - (now - t) / window):.1f},{base - plot_h * v / top:.1f}"
        for t, v in shown)
    last = shown[-1][1]
    parts.append(f'<polyline class="series" points="{coords}"><title>{escape(label)}: '
                 f'last {escape(number(last))}</title></polyline></svg>')
    return "".join(parts)
