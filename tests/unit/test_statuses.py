"""Statuses defined once, and a delivery's moves held to their table: closed, final states
final, every state reachable from queued, and no statement can be built for a move the
table does not list."""

from __future__ import annotations

import pytest
from sqlalchemy import CheckConstraint
from sqlalchemy.dialects import sqlite

from autofunnel.domain.statuses import DELIVERY_MOVES, FINAL_DELIVERY, SUPPRESSED, DeliveryStatus, EnrollmentStatus, LeadStatus, require_move
from autofunnel.errors import IllegalStatusMove
from autofunnel.store.delivery_moves import move
from autofunnel.store.models import Delivery, Enrollment, Lead


def test_every_delivery_status_has_its_moves_and_nothing_leaves_a_final_one() -> None:
    assert set(DELIVERY_MOVES) == set(DeliveryStatus)
    assert all(onward <= set(DeliveryStatus) for onward in DELIVERY_MOVES.values())
    assert FINAL_DELIVERY == {DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED}


def test_every_status_is_reachable_from_queued() -> None:
    seen, frontier = {DeliveryStatus.QUEUED}, [DeliveryStatus.QUEUED]
    while frontier:
        for onward in DELIVERY_MOVES[frontier.pop()]:
            if onward not in seen:
                seen.add(onward)
                frontier.append(onward)
    assert seen == set(DeliveryStatus)


def test_an_email_that_may_have_gone_is_never_queued_again() -> None:
    for final in FINAL_DELIVERY:
        with pytest.raises(IllegalStatusMove):
            require_move(final, DeliveryStatus.QUEUED)
    with pytest.raises(IllegalStatusMove):
        require_move(DeliveryStatus.QUEUED, DeliveryStatus.SENT)  # never sent without a claim


@pytest.mark.parametrize("before", list(DeliveryStatus))
@pytest.mark.parametrize("after", list(DeliveryStatus))
def test_a_statement_is_built_only_for_a_listed_move_and_guards_its_from_status(before: DeliveryStatus, after: DeliveryStatus) -> None:
    if after not in DELIVERY_MOVES[before]:
        with pytest.raises(IllegalStatusMove):
            move(before, after)
        return
    compiled = move(before, after, on=Delivery.__table__).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    assert f"WHERE deliveries.status = '{before}'" in str(compiled)
    assert f"status='{after}'" in str(compiled).replace(" ", "")


def test_several_targets_need_the_written_one_named() -> None:
    with pytest.raises(ValueError):
        move(DeliveryStatus.SENDING, (DeliveryStatus.SENT, DeliveryStatus.FAILED))
    with pytest.raises(IllegalStatusMove):
        move(DeliveryStatus.QUEUED, (DeliveryStatus.SENDING, DeliveryStatus.SENT), status="sent")


def _check_words(table: object) -> str:
    return next(str(c.sqltext) for c in table.constraints if isinstance(c, CheckConstraint) and c.name.endswith("status"))  # type: ignore[attr-defined]


def test_the_store_checks_exactly_the_domains_words() -> None:
    for model, statuses in ((Lead, LeadStatus), (Enrollment, EnrollmentStatus), (Delivery, DeliveryStatus)):
        assert _check_words(model.__table__) == "status IN (" + ", ".join(f"'{s.value}'" for s in statuses) + ")"
    assert SUPPRESSED == set(LeadStatus) - {LeadStatus.PENDING, LeadStatus.ACTIVE}
