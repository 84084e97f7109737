"""`tick --now`: a real pass far from the clock is refused unless forced; a dry run never is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from autofunnel.errors import InvalidInputError
from autofunnel.services.inputs import check_tick_moment

NOW = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(seconds=59), -timedelta(minutes=1)])
def test_a_moment_within_a_minute_runs(offset: timedelta) -> None:
    check_tick_moment(NOW + offset, NOW, dry_run=False, force=False)


@pytest.mark.parametrize("offset", [timedelta(minutes=1, seconds=1), timedelta(days=30), -timedelta(hours=2)])
def test_a_distant_moment_is_refused_with_the_reason(offset: timedelta) -> None:
    with pytest.raises(InvalidInputError) as refused:
        check_tick_moment(NOW + offset, NOW, dry_run=False, force=False)
    assert refused.value.field == "--now"
    assert "from the clock" in str(refused.value) and "--dry-run" in str(refused.value) and "--force" in str(refused.value)


def test_dry_run_or_force_lets_any_moment_through() -> None:
    check_tick_moment(NOW + timedelta(days=400), NOW, dry_run=True, force=False)
    check_tick_moment(NOW - timedelta(days=400), NOW, dry_run=False, force=True)
