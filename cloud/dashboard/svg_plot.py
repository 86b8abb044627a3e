"""Line plots as inline SVG: presentation attributes only (no style=, no script), so
the page's CSP needs nothing inline. Every text is escaped by the caller's ``escape``."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 520, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 34
COLOURS = ("#1f5fa8", "#c2410c", "#15803d", "#7e22ce")


def line_plot(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    y_range: tuple[float, float] | None = None,
    x_label: str = "round",
) -> str:
    """An ``<svg>`` with one polyline (and point markers with tooltips) per named series."""
    points = [p for values in series.values() for p in values]
    if not points:
        return f'<p class="empty">{escape(title)}: no data yet</p>'
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range if y_range else (min(0.0, min(ys)), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y1 = y0 + 1.0

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)

    def py(y: float) -> float:
        return HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}" fill="#ffffff" stroke="#b8c0ca"/>',
    ]
    for i in range(5):  # horizontal grid and y ticks
        value = y0 + (y1 - y0) * i / 4
        y = py(value)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7ec"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#4b5866">{value:.3g}</text>'
        )
    for x in _x_ticks(x0, x1):
        parts.append(
            f'<text x="{px(x):.1f}" y="{HEIGHT - BOTTOM + 15}" font-size="11" '
            f'text-anchor="middle" fill="#4b5866">{x:g}</text>'
        )
    parts.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 4}" font-size="11" '
        f'text-anchor="middle" fill="#4b5866">{escape(x_label)}</text>'
    )
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        ordered = sorted(values)
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in ordered)
        parts.append(
            f'<polyline class="series" data-series="{escape(name)}" fill="none" '
            f'stroke="{colour}" stroke-width="2" points="{coords}"/>'
        )
        for x, y in ordered:
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}">'
                f"<title>{escape(name)} {x_label} {x:g}: {y:.4f}</title></circle>"
            )
        parts.append(
            f'<text x="{LEFT + 8 + 110 * index}" y="{TOP + 14}" font-size="12" '
            f'fill="{colour}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _x_ticks(x0: float, x1: float, most: int = 10) -> list[float]:
    step = max(1, round((x1 - x0) / most))
    first = int(x0) if x0 == int(x0) else int(x0) + 1
    return [float(x) for x in range(first, int(x1) + 1, step)]
