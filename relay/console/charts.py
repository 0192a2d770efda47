"""Bar charts as inline SVG, drawn on the server: no script, no chart library, nothing to fetch.

Each bar carries a <title>, which the browser shows on hover, so the exact number is a pointer away.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.console.markup import esc

WIDTH, HEIGHT = 960, 200
LEFT, BOTTOM, TOP = 48, 22, 10


def hourly_bars(hours: Sequence[dict[str, Any]], series: Sequence[str], label: str) -> str:
    """Grouped bars per hour for the named series (keys of each hour's dict: "sent", "bounced", ...)."""
    peak = max([1, *(int(hour[name]) for hour in hours for name in series)])
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(1, len(hours))
    bar = max(1.0, (slot * 0.8) / len(series))
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{esc(label)}">',
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end">{peak}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    step = max(1, len(hours) // 12)  # at most ~12 hour labels
    for i, hour in enumerate(hours):
        x0 = LEFT + i * slot + slot * 0.1
        for j, name in enumerate(series):
            value = int(hour[name])
            height = plot_h * value / peak
            parts.append(
                f'<rect class="{esc(name)}" x="{x0 + j * bar:.1f}" y="{TOP + plot_h - height:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}"><title>{esc(hour["hour"][:13])}:00 UTC '
                f"{esc(name)}: {value}</title></rect>"
            )
        if i % step == 0:
            parts.append(
                f'<text x="{LEFT + i * slot + slot / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                f"{esc(hour['hour'][11:13])}h</text>"
            )
    parts.append("</svg>")
    legend = "".join(f'<span><i class="{esc(name)}"></i>{esc(name)}</span>' for name in series)
    return f'<div class="legend">{legend}</div>' + "".join(parts)
