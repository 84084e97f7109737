"""The admin's SVG geometry: figures in, shapes out, no browser."""

from __future__ import annotations

from autofunnel.web.admin.charts import funnel_chart, polyline, trend_chart


def stage(name: str, reached: int, conversion: float | None = None, median: int | None = None) -> dict[str, object]:
    return {"stage": name, "reached": reached, "conversion_from_previous": conversion, "time_to_reach": {"median_s": median, "p90_s": None}}


def test_bars_are_as_wide_as_reached_and_centred() -> None:
    chart = funnel_chart([stage("lead", 1000), stage("tripwire", 520, 0.52, 93600), stage("core", 130, 0.25), stage("upsell", 0, 0.0)], width=600, bar_height=30, gap=10)
    assert [bar.width for bar in chart.bars] == [600, 312, 78, 1.0]
    assert [bar.x for bar in chart.bars] == [0, 144, 261, 299.5]
    assert [bar.y for bar in chart.bars] == [0, 40, 80, 120]
    assert chart.height == 150
    assert (chart.bars[1].conversion_from_previous, chart.bars[1].median_s) == (0.52, 93600)


def test_an_empty_funnel_draws_slivers_not_a_division_by_zero() -> None:
    chart = funnel_chart([stage("lead", 0), stage("buyer", 0)])
    assert [bar.width for bar in chart.bars] == [1.0, 1.0]
    assert funnel_chart([]).height == 0


def test_polyline_spans_the_width_with_the_largest_value_on_top() -> None:
    assert polyline([0, 5, 10], 100, 20, pad=0) == "0.0,20.0 50.0,10.0 100.0,0.0"
    assert polyline([3], 100, 20, pad=2) == "0,2.0 100,2.0"
    assert polyline([0, 0], 100, 20, pad=2) == "0.0,18 100.0,18"
    assert polyline([], 100, 20) == ""


def test_trend_has_one_point_per_period_for_entries_and_conversion() -> None:
    periods = [
        {"period": "2026-03-01", "stages": [stage("lead", 10)], "overall_conversion": 0.1},
        {"period": "2026-03-02", "stages": [stage("lead", 20)], "overall_conversion": 0.2},
    ]
    chart = trend_chart(periods, width=200, height=100)
    assert chart.labels == ["2026-03-01", "2026-03-02"]
    assert chart.entries == "0.0,50.0 200.0,6.0"
    assert chart.conversion == "0.0,50.0 200.0,6.0"
    assert (chart.max_entries, chart.max_conversion) == (20, 0.2)
