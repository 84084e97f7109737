"""Three soft bounces in a row count as hard: the rule, by the events' `at`, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from autofunnel.domain.conditions import EventFact
from autofunnel.domain.routing import ChangeStatus, soft_bounces_in_a_row, status_effect

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def fact(type_: str, minutes: int, **properties: object) -> EventFact:
    return EventFact(type_, dict(properties), T0 + timedelta(minutes=minutes))


def test_the_third_soft_bounce_in_a_row_suppresses() -> None:
    history = [fact("bounced", 1, kind="soft"), fact("bounced", 2, kind="soft")]
    assert status_effect("active", "bounced", {"kind": "soft"}, history, T0 + timedelta(minutes=3)) == ChangeStatus("bounced", "3 soft bounces in a row")
    assert status_effect("active", "bounced", {"kind": "soft"}, history[:1], T0 + timedelta(minutes=3)) is None


def test_a_delivery_or_a_persons_open_between_starts_over_but_a_machines_open_does_not() -> None:
    soft = [fact("bounced", 1, kind="soft"), fact("bounced", 2, kind="soft")]
    assert soft_bounces_in_a_row([soft[0], fact("delivered", 1), soft[1]], fact("bounced", 3, kind="soft")) == 2
    assert soft_bounces_in_a_row([*soft, fact("opened", 2, bot=False)], fact("bounced", 3, kind="soft")) == 1
    assert soft_bounces_in_a_row([*soft, fact("opened", 2, bot=True)], fact("bounced", 3, kind="soft")) == 3


def test_bounces_count_by_their_at_so_a_late_one_counts_where_it_happened() -> None:
    history = [fact("bounced", 1, kind="soft"), fact("opened", 5), fact("bounced", 10, kind="soft")]
    assert soft_bounces_in_a_row(history, fact("bounced", 3, kind="soft")) == 2
    assert soft_bounces_in_a_row(history, fact("bounced", 11, kind="soft")) == 2
