"""Figures to SVG shapes: the admin's charts, drawn on the server from the report's numbers.

Pure geometry (no Flask, no database), so a chart is tested as numbers in,
coordinates out. Templates only place the shapes; nothing is computed there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bar:
    """One stage of the funnel chart: a bar centred on the chart, as wide as its `reached`."""

    label: str
    reached: int
    x: float
    y: float
    width: float
    height: float
    conversion_from_previous: float | None
    median_s: int | None


@dataclass(frozen=True)
class FunnelChart:
    width: float
    height: float
    bars: list[Bar]


def funnel_chart(stages: Sequence[dict[str, Any]], width: float = 600, bar_height: float = 34, gap: float = 10) -> FunnelChart:
    """Bars centred on one axis, each as wide as its stage's `reached` relative to the widest.

    The funnel never widens (a later stage counts as having reached every earlier
    one), so the bars narrow downward; a stage nobody reached keeps a 1 px sliver
    so its place stays visible.
    """
    top = max((int(stage["reached"]) for stage in stages), default=0)
    bars: list[Bar] = []
    for index, stage in enumerate(stages):
        reached = int(stage["reached"])
        bar_width = max(1.0, width * reached / top) if top else 1.0
        bars.append(Bar(
            label=str(stage["stage"]), reached=reached, x=round((width - bar_width) / 2, 2), y=index * (bar_height + gap),
            width=round(bar_width, 2), height=bar_height,
            conversion_from_previous=stage.get("conversion_from_previous"),
            median_s=(stage.get("time_to_reach") or {}).get("median_s"),
        ))
    height = len(bars) * (bar_height + gap) - gap if bars else 0
    return FunnelChart(width, max(height, 0), bars)


def _scale(values: Sequence[float], low_px: float, high_px: float) -> list[float]:
    """Values to pixel heights from `low_px` (the smallest, or 0) up to `high_px` (the largest)."""
    top = max(values, default=0.0)
    bottom = min(0.0, min(values, default=0.0))
    span = top - bottom
    if span <= 0:
        return [low_px for _ in values]
    return [round(low_px - (value - bottom) / span * (low_px - high_px), 2) for value in values]


def polyline(values: Sequence[float], width: float, height: float, pad: float = 2) -> str:
    """The `points` of an SVG polyline across `width`: the first value at the left edge, the last at the right.

    SVG's y grows downward, so the largest value is at the top (`pad`) and zero at the bottom.
    """
    if not values:
        return ""
    ys = _scale(values, height - pad, pad)
    if len(values) == 1:
        return f"0,{ys[0]} {width},{ys[0]}"
    step = width / (len(values) - 1)
    return " ".join(f"{round(index * step, 2)},{y}" for index, y in enumerate(ys))


@dataclass(frozen=True)
class LineChart:
    """Two series over the same periods: entries (left scale) and overall conversion (right scale)."""

    width: float
    height: float
    labels: list[str]
    entries: str
    conversion: str
    max_entries: int
    max_conversion: float


def trend_chart(periods: Sequence[dict[str, Any]], width: float = 600, height: float = 160) -> LineChart:
    """The report's `periods` as two lines: leads entering the first stage, and overall conversion."""
    entries = [float(period["stages"][0]["reached"]) if period["stages"] else 0.0 for period in periods]
    conversion = [float(period["overall_conversion"] or 0.0) for period in periods]
    return LineChart(
        width, height, [str(period["period"]) for period in periods],
        polyline(entries, width, height, pad=6), polyline(conversion, width, height, pad=6),
        int(max(entries, default=0)), max(conversion, default=0.0),
    )
