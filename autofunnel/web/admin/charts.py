"""Figures turned into SVG shapes, drawn on the server.

Pure geometry: numbers in, coordinates out, no Flask and no SVG text, so the
shapes are tested without a browser and the templates only place them. Charts
are readable with JavaScript off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from autofunnel.domain.report_body import period_end, period_of_day


@dataclass(frozen=True)
class Bar:
    """One stage of the narrowing funnel: a bar centred on the axis, as wide as its `reached`."""

    x: float
    y: float
    width: float
    height: float
    label: str
    reached: int


def funnel_bars(stages: Sequence[tuple[str, int]], width: float = 600, bar_height: float = 34, gap: float = 10) -> list[Bar]:
    """Bars for (stage, reached) pairs; the first stage, or the widest, spans `width`.

    A stage with some leads never shrinks to nothing (2 px at least), so a
    tiny last stage is still visible and can be pointed at.
    """
    widest = max((reached for _, reached in stages), default=0)
    bars = []
    for index, (label, reached) in enumerate(stages):
        share = reached / widest if widest else 0.0
        w = max(width * share, 2.0 if reached else 0.0)
        bars.append(Bar(x=(width - w) / 2, y=index * (bar_height + gap), width=w, height=bar_height, label=label, reached=reached))
    return bars


def funnel_height(count: int, bar_height: float = 34, gap: float = 10) -> float:
    return max(count * (bar_height + gap) - gap, bar_height)


def sparkline(values: Sequence[float], width: float = 120, height: float = 28, pad: float = 2) -> str:
    """The `points` of an SVG polyline through `values`, scaled to the box (flat at the bottom when all are zero)."""
    if not values:
        return ""
    top = max(values) or 1
    step = (width - 2 * pad) / max(len(values) - 1, 1)
    return " ".join(
        f"{pad + index * step:.1f},{height - pad - (value / top) * (height - 2 * pad):.1f}" for index, value in enumerate(values)
    )


@dataclass(frozen=True)
class LineChart:
    """A line per series over shared x labels, with its y-axis top value."""

    width: float
    height: float
    lines: tuple[tuple[str, str], ...]
    """(series name, polyline points)."""
    x_labels: tuple[tuple[float, str], ...]
    y_top: float
    dots: tuple[tuple[float, float], ...] = ()
    """Every drawn point, so a lone value (a line of one point draws nothing) still shows."""


def line_chart(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], width: float = 600, height: float = 160,
               left: float = 44, bottom: float = 22, top_pad: float = 8) -> LineChart:
    """Lines for each named series; a missing value (None) is left out of its line.

    Every series shares the y scale, so draw figures of one kind per chart
    (entries, or conversions), never both.
    """
    known = [v for _, values in series for v in values if v is not None]
    y_top = max(known, default=0) or 1
    plot_w = width - left - 8
    plot_h = height - bottom - top_pad
    step = plot_w / max(len(labels) - 1, 1)

    def xy(index: int, value: float) -> tuple[float, float]:
        return round(left + index * step, 1), round(top_pad + plot_h - (value / y_top) * plot_h, 1)

    def point(index: int, value: float) -> str:
        x, y = xy(index, value)
        return f"{x:.1f},{y:.1f}"

    lines = tuple(
        (name, " ".join(point(i, v) for i, v in enumerate(values) if v is not None)) for name, values in series
    )
    dots = tuple(xy(i, v) for _, values in series for i, v in enumerate(values) if v is not None)
    every = max(1, len(labels) // 6)
    x_labels = tuple((left + i * step, label) for i, label in enumerate(labels) if i % every == 0)
    return LineChart(width, height, lines, x_labels, y_top, dots)


def period_starts(start: date, end: date, interval: str) -> list[str]:
    """The first day of every period (`day`, `week` from Monday, `month`) from `start` to `end`,
    as the report labels them, so a trend shows the quiet periods the report leaves out."""
    days: list[str] = []
    current = period_of_day(start, interval)
    while date.fromisoformat(current) <= end:
        days.append(current)
        current = period_end(current, interval).isoformat()
    return days
