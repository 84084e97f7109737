"""A report's periods: the day each one starts on and the day after it ends, for every day of four years."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from autofunnel.domain.report_body import period_end, period_of_day


@pytest.mark.parametrize("unit", ["day", "week", "month"])
def test_every_day_lies_in_its_period_and_periods_follow_each_other(unit: str) -> None:
    day = date(2023, 12, 25)  # a Monday; four years with a leap day
    while day < date(2028, 1, 8):
        period = period_of_day(day, unit)
        first, after = date.fromisoformat(period), period_end(period, unit)
        assert first <= day < after
        assert period_of_day(after, unit) != period and period_of_day(after - timedelta(days=1), unit) == period
        day += timedelta(days=1)


def test_the_lengths_of_weeks_and_months() -> None:
    assert period_end("2026-03-02", "week") == date(2026, 3, 9)
    assert period_end("2024-02-01", "month") == date(2024, 3, 1)
    assert period_end("2026-12-01", "month") == date(2027, 1, 1)
    assert period_end("2026-01-31", "day") == date(2026, 2, 1)
