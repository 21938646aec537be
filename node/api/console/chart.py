"""The Overview's chart: entries added per day per log, as server-drawn SVG geometry.

Layer: node.api. Pure arithmetic; the template draws the rectangles, so the
browser needs no script and no chart library.

One row per log (small multiples), each scaled to its own busiest day: a
replica of ten million entries and an own log of a few hundred are both
readable, and the row's label says its scale.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

__all__ = ["CHART_DAYS", "Bar", "Chart", "ChartRow", "growth_chart"]

CHART_DAYS = 14
"""Days shown, today included."""

_LABEL_W = 230  # room for the origin on the left
_BAR_W = 22
_GAP = 4
_ROW_H = 34
_BAR_MAX_H = 24
_TOP = 18


@dataclass(frozen=True, slots=True)
class Bar:
    """One day of one log: its rectangle and what it stands for."""

    day: str
    count: int
    x: int
    y: int
    height: int


@dataclass(frozen=True, slots=True)
class ChartRow:
    """One log's row: its label, the busiest day's count, the bars."""

    origin: str
    peak: int
    total: int
    y: int
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    """The whole drawing: its size, the day ticks and one row per log."""

    width: int
    height: int
    days: tuple[tuple[str, int], ...]
    rows: tuple[ChartRow, ...]


def growth_chart(per_day: dict[str, dict[str, int]], now: float) -> Chart:
    """Lay out ``per_day`` (origin -> day -> entries added) for the last :data:`CHART_DAYS` days."""
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    days = [
        (today - datetime.timedelta(days=CHART_DAYS - 1 - i)).isoformat() for i in range(CHART_DAYS)
    ]
    xs = [_LABEL_W + i * (_BAR_W + _GAP) for i in range(CHART_DAYS)]
    rows = []
    for n, (origin, counts) in enumerate(per_day.items()):
        top = _TOP + n * _ROW_H
        values = [max(0, counts.get(day, 0)) for day in days]
        peak = max(values)
        bars = []
        for day, x, count in zip(days, xs, values, strict=True):
            height = 0 if peak == 0 else max(1 if count else 0, round(_BAR_MAX_H * count / peak))
            bars.append(Bar(day, count, x, top + _BAR_MAX_H - height, height))
        rows.append(ChartRow(origin, peak, sum(values), top, tuple(bars)))
    width = _LABEL_W + CHART_DAYS * (_BAR_W + _GAP) + 10
    height = _TOP + max(1, len(rows)) * _ROW_H + 16
    ticks = tuple((day[5:], x) for day, x in zip(days, xs, strict=True))
    return Chart(width, height, ticks, tuple(rows))
