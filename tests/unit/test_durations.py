from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autofunnel.domain.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)), ("2d", timedelta(days=2)),
     ("1w", timedelta(weeks=1)), ("1d12h", timedelta(days=1, hours=12)), ("0m", timedelta(0)), ("45s", timedelta(seconds=45))],
)
def test_parses_what_sellers_write(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1", "1 day", "d", "-1h", "1.5h", "1y", 5, None, "1h 30m"])
def test_rejects_anything_else(text: object) -> None:
    with pytest.raises(DurationError, match="bad duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**8))
def test_format_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta
