"""Server-rendered SVG charts for the Summary page (no script, no CDN, no library).

Owns: turning chart data (colour totals, risk points) into accessible SVG markup:
``role="img"`` with a title and a text description, every bar and line labelled with
words and numbers (colour is never the only signal), styling through CSS classes (the
Content-Security-Policy allows no inline style). Every text that goes into the markup
is escaped here; callers pass numbers and dates only.

Must not touch: the store, HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from portwatch.web.service import ColourTotals, RiskPoint

GRADE_BANDS = (("A", 0, 10), ("B", 10, 25), ("C", 25, 50), ("D", 50, 75), ("F", 75, 100))


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def colour_bars(totals: ColourTotals) -> Markup:
    """Horizontal bars: open ports that are red, yellow, green, CDN-expected, and UDP
    ports unconfirmed (open|filtered; the bars add up to the open ports)."""
    bars = (("red", "Red: risky when exposed", totals.red),
            ("yellow", "Yellow: unknown or TLS issue", totals.yellow),
            ("green", "Green: meant to be public", totals.green),
            ("cdn", "CDN-expected (no risk)", totals.cdn_expected),
            ("unconfirmed", "UDP unconfirmed (no risk)", totals.unconfirmed))
    widest = max(1, *(v for _, _, v in bars))
    width, label_w, row_h = 560, 210, 34
    height = row_h * len(bars) + 8
    plot_w = width - label_w - 70
    desc = ", ".join(f"{label}: {value}" for _, label, value in bars)
    out = [f'<svg class="chart chart-bars" viewBox="0 0 {width} {height}" role="img" '
           f'aria-labelledby="bars-title bars-desc" preserveAspectRatio="xMinYMin meet">',
           '<title id="bars-title">Open ports by risk colour</title>',
           f'<desc id="bars-desc">{escape(desc)}</desc>']
    for i, (key, label, value) in enumerate(bars):
        y = 4 + i * row_h
        bar_w = 0 if value == 0 else max(3, round(plot_w * value / widest))
        out.append(f'<g class="bar bar-{key}"><text class="bar-label" x="0" y="{y + 21}">'
                   f'{escape(label)}</text>'
                   f'<rect class="bar-track" x="{label_w}" y="{y + 6}" width="{plot_w}" '
                   f'height="20" rx="4"/>'
                   f'<rect class="bar-fill" x="{label_w}" y="{y + 6}" width="{bar_w}" '
                   f'height="20" rx="4"><title>{escape(label)}: {value:,}</title></rect>'
                   f'<text class="bar-value" x="{label_w + plot_w + 8}" y="{y + 21}">'
                   f'{value:,}</text></g>')
    out.append("</svg>")
    return Markup("".join(out))


def risk_line(points: Sequence[RiskPoint]) -> Markup:
    """Average (solid) and worst (dashed) risk score per day, on the 0-100 grade bands."""
    width, height = 560, 240
    left, right, top, bottom = 40, 16, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    if not points:
        return Markup('<p class="chart-empty">No scans in this window yet: the risk '
                      'history appears after the first scan.</p>')

    def x(i: int) -> float:
        return left + (plot_w / 2 if len(points) == 1 else plot_w * i / (len(points) - 1))

    def y(score: float) -> float:
        return top + plot_h * (1 - max(0.0, min(100.0, score)) / 100)

    first, last = points[0], points[-1]
    desc = (f"{len(points)} day(s) from {first.day.isoformat()} to {last.day.isoformat()}; "
            f"average score {_num(first.average)} then {_num(last.average)}, "
            f"worst {_num(last.worst)} on the last day")
    out = [f'<svg class="chart chart-line" viewBox="0 0 {width} {height}" role="img" '
           f'aria-labelledby="line-title line-desc" preserveAspectRatio="xMinYMin meet">',
           '<title id="line-title">Risk score over time</title>',
           f'<desc id="line-desc">{escape(desc)}</desc>']
    for grade, low, high in GRADE_BANDS:
        out.append(f'<rect class="band band-{grade}" x="{left}" y="{y(high):.1f}" '
                   f'width="{plot_w}" height="{y(low) - y(high):.1f}"/>'
                   f'<text class="band-label" x="{left + plot_w - 4}" '
                   f'y="{y(high) + 13:.1f}" text-anchor="end">grade {grade}</text>')
    for tick in (0, 25, 50, 75, 100):
        out.append(f'<text class="axis" x="{left - 6}" y="{y(tick) + 4:.1f}" '
                   f'text-anchor="end">{tick}</text>')
    step = max(1, len(points) // 6)
    for i, p in enumerate(points):
        if i % step == 0 or i == len(points) - 1:
            out.append(f'<text class="axis" x="{x(i):.1f}" y="{height - 14}" '
                       f'text-anchor="middle">{escape(p.day.strftime("%b %d"))}</text>')
    for cls, attr in (("worst", "worst"), ("average", "average")):
        coords = " ".join(f"{x(i):.1f},{y(getattr(p, attr)):.1f}" for i, p in enumerate(points))
        out.append(f'<polyline class="line line-{cls}" points="{coords}"/>')
        for i, p in enumerate(points):
            out.append(f'<circle class="dot dot-{cls}" cx="{x(i):.1f}" '
                       f'cy="{y(getattr(p, attr)):.1f}" r="3.5"><title>'
                       f'{escape(p.day.isoformat())}: {cls} score {_num(getattr(p, attr))} '
                       f'over {p.targets} target(s)</title></circle>')
    out.append("</svg>")
    return Markup("".join(out))
