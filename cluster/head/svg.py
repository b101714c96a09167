"""Small SVG drawings for the status page: loss curves and bars.

Each function returns SVG markup as text. Every piece of text that goes into
it is escaped here (a bar's label may hold a host name), so callers can embed
the result as is. Colours come from the page's stylesheet through classes,
never from style attributes: the page's Content-Security-Policy allows no
inline styles outside its own <style> block.
"""
from __future__ import annotations

import html
import math

MAX_POINTS = 400  # per curve: more than a 360-pixel chart can show


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _finite(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    # A diverged job reports inf or nan; drawing them would break the scale.
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def thin(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most `limit` points, evenly picked, always keeping the last one."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    picked = [points[int(i * step)] for i in range(limit - 1)]
    return picked + [points[-1]]


def _tick(v: float) -> str:
    return f"{v:.3g}"


def loss_chart(series: dict[str, list[tuple[float, float]]], x_max: float | None = None,
               width: int = 360, height: int = 150, title: str = "loss") -> str:
    """Loss (y) against iteration (x), one polyline per series.

    `series` maps a class name ("train", "val") to (iteration, loss) points in
    iteration order. Points with few values get a dot each so a single
    evaluation still shows. `x_max` (the job's last iteration) fixes the x axis
    so a running job's curve grows to the right as it trains."""
    clean = {name: thin(_finite(pts)) for name, pts in series.items()}
    every = [p for pts in clean.values() for p in pts]
    left, right, top, bottom = 44, 8, 8, 20  # room for tick labels
    plot_w, plot_h = width - left - right, height - top - bottom
    out = [f'<svg class="chart loss" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="{_esc(title)}"><title>{_esc(title)}</title>',
           f'<rect class="plot" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>']
    if not every:
        out.append(f'<text class="empty" x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" '
                   'text-anchor="middle">no loss reported yet</text></svg>')
        return "".join(out)
    xs = [x for x, _ in every]
    ys = [y for _, y in every]
    x0 = min(0.0, min(xs))
    x1 = max(max(xs), x_max or 0.0)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or max(abs(y1) * 0.05, 0.05)  # a flat curve still gets a band
    y0, y1 = y0 - pad, y1 + pad
    x_span = (x1 - x0) or 1.0

    def px(x: float) -> float:
        return left + (x - x0) / x_span * plot_w

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * plot_h

    for i in range(3):  # three horizontal grid lines with their loss values
        y = y0 + (y1 - y0) * (0.15 + 0.35 * i)
        out.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}"/>'
                   f'<text class="tick" x="{left - 4}" y="{py(y) + 3:.1f}" text-anchor="end">{_tick(y)}</text>')
    out.append(f'<text class="tick" x="{left}" y="{height - 6}" text-anchor="start">{_tick(x0)}</text>'
               f'<text class="tick" x="{left + plot_w}" y="{height - 6}" text-anchor="end">{_tick(x1)} it</text>')
    for name, pts in clean.items():
        if not pts:
            continue
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline class="curve {_esc(name)}" points="{coords}"/>')
        if len(pts) <= 40:
            out.extend(f'<circle class="dot {_esc(name)}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="2"/>' for x, y in pts)
    legend_x = left + plot_w - 4
    for i, name in enumerate(n for n, pts in clean.items() if pts):
        last = clean[name][-1][1]
        out.append(f'<text class="legend {_esc(name)}" x="{legend_x}" y="{top + 12 + 12 * i}" '
                   f'text-anchor="end">{_esc(name)} {last:.3f}</text>')
    out.append("</svg>")
    return "".join(out)


def bar(fraction: float | None, cls: str = "", label: str = "", width: int = 120, height: int = 10) -> str:
    """One horizontal bar filled to `fraction` (0..1); None draws an empty track."""
    f = 0.0 if fraction is None or not math.isfinite(fraction) else min(1.0, max(0.0, fraction))
    title = f"<title>{_esc(label)}</title>" if label else ""
    # preserveAspectRatio none: the page may stretch a bar to the room it has
    return (f'<svg class="bar {_esc(cls)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'preserveAspectRatio="none" role="img" aria-label="{_esc(label)}">{title}'
            f'<rect class="track" width="{width}" height="{height}" rx="2"/>'
            f'<rect class="fill" width="{_num(f * width)}" height="{height}" rx="2"/></svg>')


def stacked(parts: list[tuple[float, str, str]], width: int = 240, height: int = 12) -> str:
    """One bar split into parts (value, class, label), each as wide as its share."""
    total = sum(max(0.0, v) for v, _, _ in parts)
    out = [f'<svg class="stacked" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{_esc(", ".join(label for v, _, label in parts if v > 0))}">'
           f'<rect class="track" width="{width}" height="{height}" rx="2"/>']
    x = 0.0
    for value, cls, label in parts:
        if value <= 0 or total <= 0:
            continue
        w = value / total * width
        out.append(f'<rect class="part {_esc(cls)}" x="{_num(x)}" width="{_num(w)}" height="{height}">'
                   f'<title>{_esc(label)}</title></rect>')
        x += w
    out.append("</svg>")
    return "".join(out)
