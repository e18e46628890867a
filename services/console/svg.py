"""Graphs as SVG, drawn on the server (the page needs no JavaScript to show them)."""

from __future__ import annotations

import datetime as dt
from xml.sax.saxutils import escape

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 720, 150, 48, 20, 10


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    step = 1.0
    while step * 10 < v:
        step *= 10
    for m in (1, 2, 5, 10):
        if m * step >= v:
            return m * step
    return 10 * step  # pragma: no cover - the loop above always returns


def minute_label(minute: int) -> str:
    return dt.datetime.fromtimestamp(minute * 60, dt.UTC).strftime("%Y-%m-%d %H:%MZ")


def chart(title: str, points: list[tuple[int, float]], start_minute: int, end_minute: int, step_minutes: int) -> str:
    """A bar chart of (minute, value) between START_MINUTE and END_MINUTE, one bar per STEP_MINUTES.
    The <title> elements carry the numbers (shown as tooltips, read by screen readers and tests)."""
    plot_w, plot_h = WIDTH - PAD_LEFT - 4, HEIGHT - PAD_BOTTOM - PAD_TOP
    slots = max(1, (end_minute - start_minute) // step_minutes + 1)
    top = _nice_max(max((v for _, v in points), default=0.0))
    bar_w = plot_w / slots
    total = sum(v for _, v in points)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}: total {total:g}">',
        f"<title>{escape(title)}: total {total:g}</title>",
        f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}" fill="#f6f8fa" stroke="#d0d7de"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 10}" text-anchor="end" font-size="11">{top:g}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    for minute, v in points:
        if v <= 0:
            continue
        i = (minute - start_minute) // step_minutes
        h = max(1.0, plot_h * v / top)
        x = PAD_LEFT + i * bar_w
        when = dt.datetime.fromtimestamp(minute * 60, dt.UTC).strftime("%Y-%m-%d %H:%M")
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{PAD_TOP + plot_h - h:.1f}" width="{max(1.0, bar_w):.1f}" '
                     f'height="{h:.1f}" fill="#0969da"><title>{when}Z: {v:g}</title></rect>')
    for minute, anchor, x in ((start_minute, "start", PAD_LEFT), (end_minute, "end", PAD_LEFT + plot_w)):
        label = dt.datetime.fromtimestamp(minute * 60, dt.UTC).strftime("%m-%d %H:%MZ")
        parts.append(f'<text x="{x}" y="{HEIGHT - 4}" text-anchor="{anchor}" font-size="11">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)
