"""When an email may go out: send windows and quiet days in the lead's own
timezone, and the frequency cap across all funnels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from autofunnel.domain.model import WEEKDAYS, FrequencyCap, SendingRules, SendWindow


def lead_zone(name: str | None) -> ZoneInfo:
    """The lead's IANA zone; UTC when unknown, so a bad stored value never stops sending."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def _in_window(local: datetime, window: SendWindow | None) -> bool:
    if window is None:
        return True
    moment = local.time().replace(tzinfo=None)
    if window.start < window.end:
        return window.start <= moment < window.end
    return moment >= window.start or moment < window.end


def _allowed(local: datetime, rules: SendingRules) -> bool:
    return WEEKDAYS[local.weekday()] not in rules.quiet_days and _in_window(local, rules.send_window)


def next_allowed(now: datetime, rules: SendingRules, timezone: str | None) -> datetime:
    """`now` if an email may go now, else the first later moment the rules allow (UTC)."""
    if rules.send_window is None and not rules.quiet_days:
        return now
    zone = lead_zone(timezone)
    local = now.astimezone(zone)
    if _allowed(local, rules):
        return now
    start = rules.send_window.start if rules.send_window else datetime.min.time()
    for days in range(0, 9):
        day = (local + timedelta(days=days)).date()
        candidate = datetime.combine(day, start, tzinfo=zone)
        if candidate > local and _allowed(candidate, rules):
            return candidate.astimezone(UTC)
    raise ValueError("quiet_days and send_window leave no moment to send")


@dataclass(frozen=True)
class CapVerdict:
    """Under the cap (`ok`), or capped: `defer_until` a moment, or skip."""

    ok: bool
    defer_until: datetime | None = None


def check_cap(now: datetime, cap: FrequencyCap | None, recent_sends: Sequence[datetime]) -> CapVerdict:
    """Count the lead's sends from every funnel within `cap.per` before `now`."""
    if cap is None:
        return CapVerdict(True)
    since = now - cap.per
    inside = sorted(moment for moment in recent_sends if since < moment <= now)
    if len(inside) < cap.max:
        return CapVerdict(True)
    if cap.when_capped == "skip":
        return CapVerdict(False)
    return CapVerdict(False, inside[-cap.max] + cap.per)
