"""Small server-side SVG charts for the admin dashboard: no JavaScript, nothing from elsewhere.

Colours come from classes styled in audit/static/audit/dashboard.css with the admin's CSS
variables, so the charts follow its light and dark themes. Each chart carries a <title> and a
<desc> with its numbers for screen readers; every bar has a <title> tooltip.
"""

import math
from collections.abc import Sequence
from datetime import datetime

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from audit.dashboard import Bucket

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 22
# The bar charts stand two abreast: a narrower drawing keeps their text as large as the columns'.
BAR_WIDTH, BAR_ROW, BAR_LABEL, BAR_VALUE = 400, 22, 150, 64


def nice_ceiling(value: int) -> int:
    """A round top for an axis: the smallest of 1, 2, 3, 4, 5, 6, 8 or 10 times a power of ten
    that is at least value (1 for nothing)."""
    if value <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1, 2, 3, 4, 5, 6, 8, 10) if value <= m * magnitude)


def _svg(
    chart_id: str, title: str, desc: str, size: tuple[int, int], body: SafeString
) -> SafeString:
    return format_html(
        '<svg class="chart" id="{0}" role="img" aria-labelledby="{0}-title {0}-desc" '
        'viewBox="0 0 {1} {2}" preserveAspectRatio="xMinYMin meet">'
        '<title id="{0}-title">{3}</title><desc id="{0}-desc">{4}</desc>{5}</svg>',
        chart_id,
        *size,
        title,
        desc,
        body,
    )


def _rect(css: str, x: float, y: float, width: float, height: float) -> SafeString:
    return format_html(
        '<rect class="{}" x="{}" y="{}" width="{}" height="{}"/>',
        css,
        round(x, 1),
        round(y, 1),
        round(width, 1),
        round(height, 1),
    )


def _text(x: float, y: float, anchor: str, text: str) -> SafeString:
    return format_html(
        '<text class="chart-text" x="{}" y="{}" text-anchor="{}">{}</text>',
        round(x, 1),
        round(y, 1),
        anchor,
        text,
    )


def column_chart(
    buckets: Sequence[Bucket], *, until: datetime, chart_id: str, title: str, time_format: str
) -> SafeString:
    """Attempts per time bucket as columns, successes below and errors stacked on top; the
    time axis runs from the first bucket's start to until."""
    top = nice_ceiling(max((b.successes + b.errors for b in buckets), default=0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(buckets), 1)
    bar = max(slot * 0.8, 1)

    def y(value: int) -> float:
        return TOP + plot_height * (1 - value / top)

    parts = []
    for value in (0, top // 2, top) if top > 1 else (0, top):
        parts.append(
            format_html(
                '<line class="chart-grid" x1="{}" x2="{}" y1="{}" y2="{}"/>',
                LEFT,
                WIDTH - RIGHT,
                round(y(value), 1),
                round(y(value), 1),
            )
        )
        parts.append(_text(LEFT - 6, y(value) + 4, "end", f"{value:,}"))
    for index, b in enumerate(buckets):
        if not b.successes + b.errors:
            continue
        x = LEFT + index * slot + (slot - bar) / 2
        tip = (
            f"{b.start:{time_format}} UTC: {b.successes + b.errors:,} attempts, {b.errors:,} errors"
        )
        parts.append(
            format_html(
                "<g><title>{}</title>{}{}</g>",
                tip,
                _rect("chart-ok", x, y(b.successes), bar, y(0) - y(b.successes)),
                _rect("chart-failed", x, y(b.successes + b.errors), bar, y(0) - y(b.errors)),
            )
        )
    if buckets:
        ticks = (
            (0, buckets[0].start, "start"),
            (len(buckets) // 2, buckets[len(buckets) // 2].start, "middle"),
            (len(buckets), until, "end"),
        )
        for index, moment, anchor in ticks:
            parts.append(_text(LEFT + index * slot, HEIGHT - 6, anchor, f"{moment:{time_format}}"))
    total = sum(b.successes + b.errors for b in buckets)
    errors = sum(b.errors for b in buckets)
    busiest = max(buckets, key=lambda b: b.successes + b.errors, default=None)
    desc = f"{len(buckets)} columns; {total:,} attempts in all, {errors:,} of them errors."
    if busiest is not None and total:
        desc += (
            f" The busiest starts {busiest.start:{time_format}} UTC with "
            f"{busiest.successes + busiest.errors:,} attempts, {busiest.errors:,} errors."
        )
    return _svg(
        chart_id, title, desc, (WIDTH, HEIGHT), format_html_join("", "{}", ((p,) for p in parts))
    )


def bar_chart(rows: Sequence[tuple[str, int, str]], *, chart_id: str, title: str) -> SafeString:
    """One horizontal bar per (label, value, css class) row, with its value written beside it."""
    largest = max((value for _, value, _ in rows), default=0) or 1
    span = BAR_WIDTH - BAR_LABEL - BAR_VALUE
    parts = []
    for index, (label, value, css) in enumerate(rows):
        y = index * BAR_ROW + 4
        width = max(span * value / largest, 1)
        parts.append(_text(BAR_LABEL - 8, y + 13, "end", label))
        parts.append(_rect(css, BAR_LABEL, y + 2, width, BAR_ROW - 8))
        parts.append(_text(BAR_LABEL + width + 6, y + 13, "start", f"{value:,}"))
    desc = "; ".join(f"{label}: {value:,}" for label, value, _ in rows) + "."
    height = len(rows) * BAR_ROW + 8
    return _svg(
        chart_id,
        title,
        desc,
        (BAR_WIDTH, height),
        format_html_join("", "{}", ((p,) for p in parts)),
    )
