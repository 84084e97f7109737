"""The one source of "now": services take a Clock so tests, `tick --now` and
`simulate` can run the same code on a fixed or virtual time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current moment, timezone-aware UTC."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class FixedClock:
    """A clock that only moves when told to; for tests, `tick --now` and simulations."""

    current: datetime

    def __post_init__(self) -> None:
        self.current = ensure_utc(self.current)

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> datetime:
        self.current = self.current + delta
        return self.current


def ensure_utc(moment: datetime) -> datetime:
    """Refuse naive datetimes: a moment without a zone is a bug waiting to send at the wrong hour."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()} given where a timezone-aware one is required")
    return moment.astimezone(UTC)
