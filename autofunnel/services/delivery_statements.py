"""The sending path's statements, one job: take a batch, read what its templates need, claim
an email, record how it ended — SQL built once per process (`functools.cache`), run by
`services.delivery`'s batch loop.

The claim (`queued` → `sending`) re-checks in the same statement whether the lead may still
receive the email; `allowed` is that check, generated from `domain.delivery`'s rule tables,
and a test holds it to `refusal` on every combination of statuses and end causes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Select, Update, and_, bindparam, insert, literal_column, null, or_, select, update
from sqlalchemy.engine import Connection

from autofunnel.domain.delivery import CLOSED_ENROLLMENT, RECIPIENT_STATUS
from autofunnel.domain.statuses import DeliveryStatus, EndCause
from autofunnel.mail.templates import lead_context
from autofunnel.services.enrollments import ready_to_send
from autofunnel.services.tallies import Cohort, may_follow, sent_email_tally
from autofunnel.store.delivery_moves import move
from autofunnel.store.facts import lead_splits
from autofunnel.store.lead_facts import Wanted, load_facts
from autofunnel.store.models import Delivery, Enrollment, Event, Lead, StageEntry, TimelineEntry
from autofunnel.store.queries import among_param
from autofunnel.store.types import UTCDateTime


@dataclass(frozen=True)
class LeadDetails:
    """What a batch reads once per email about its lead, for the template and the tallies."""

    lead: dict[str, Any]
    deadlines: dict[str, datetime]
    event: dict[str, Any]
    cohort: Cohort | None


def mark_taken(connection: Connection, now: datetime, delivery_ids: Sequence[int]) -> list[int]:
    """The batch's emails still waiting to be sent, stamped as just handed out.

    A worker has them now, so the sweep must not take them for work the broker
    lost while the batch is being sent. Emails sent, cancelled or waiting out a
    retry's back-off meanwhile are left out (and not stamped): a second copy of a
    batch costs one statement, not a send-rate slot per email.
    """
    pg = connection.dialect.name == "postgresql"
    ready = set(connection.scalars(_take_statement(pg), {"ids": list(delivery_ids), "now": now}))
    return [delivery_id for delivery_id in delivery_ids if delivery_id in ready]


@cache
def _take_statement(pg: bool) -> Update:
    """`mark_taken`'s UPDATE, built once per backend: every batch, however small, runs it."""
    now = bindparam("now", type_=UTCDateTime())
    return (
        update(Delivery.__table__)
        .where(among_param(Delivery.id, "ids", pg=pg), ready_to_send(now))
        .values(dispatched_at=now)
        .returning(Delivery.id)
    )


def read_leads(connection: Connection, delivery_ids: Sequence[int]) -> dict[int, LeadDetails]:
    """Per delivery, its lead's details for the template and its first stage entry for the tallies."""
    rows = connection.execute(_leads_statement(connection.dialect.name == "postgresql"), {"ids": list(delivery_ids)}).all()
    facts = load_facts(connection, {row.lead_id for row in rows}, Wanted(profiles=True, deadlines=True))
    details: dict[int, LeadDetails] = {}
    for row in rows:
        lead = facts.profiles[row.lead_id]
        details[row.id] = LeadDetails(
            lead_context(email=lead.email, first_name=lead.first_name, fields=dict(lead.fields), tags=list(lead.tags), timezone=lead.timezone),
            facts.deadlines.get((row.lead_id, row.flow), {}), dict(row.event or {}),
            Cohort(row.cohort_at, row.channel, row.entered_at, row.lead_split) if row.cohort_at is not None else None,
        )
    return details


@cache
def _leads_statement(pg: bool) -> Select[Any]:
    """`read_leads`' query, built once per backend: every batch, however small, runs it."""
    d = Delivery
    return (
        select(
            d.id, d.lead_id, d.flow, Event.properties.label("event"), StageEntry.cohort_at, StageEntry.channel, StageEntry.entered_at,
            lead_splits(pg, d.lead_id).label("lead_split"),
        )
        .select_from(d)
        .outerjoin(Enrollment, Enrollment.id == d.enrollment_id)
        .outerjoin(Event, Event.id == Enrollment.event_id)
        .outerjoin(StageEntry, and_(StageEntry.lead_id == d.lead_id, StageEntry.funnel == d.flow, StageEntry.position == 0))
        .where(among_param(d.id, "ids", pg=pg))
    )


@cache
def claim_statement(only_if_allowed: bool = False) -> Update:
    """`queued` → `sending` for one delivery, returning it with what decides whether it may go:
    its lead's status and its enrollment's, read in the same statement.

    `only_if_allowed` claims only an email `domain.delivery.refusal` would let go (`allowed`), so a
    statement that commits on its own never leaves a refused email `sending`.
    """
    d = Delivery
    now = bindparam("now", type_=UTCDateTime())
    # The claimed row's own columns, named with their table: SQLAlchemy writes SQLite's RETURNING
    # columns bare, and a bare `lead_id` in a subquery on `events` is the event's own column, so
    # `may_follow` asked whether anybody at all had unsubscribed (always, in a shop that has run a
    # while) and every email's record took the slow path.
    lead_id = literal_column(f"{d.__tablename__}.lead_id")
    enrollment_id = literal_column(f"{d.__tablename__}.enrollment_id")
    enrollment = select(Enrollment.status).where(Enrollment.id == enrollment_id).scalar_subquery()
    end_reason = select(Enrollment.end_reason).where(Enrollment.id == enrollment_id).scalar_subquery()
    end_cause = select(Enrollment.end_cause).where(Enrollment.id == enrollment_id).scalar_subquery()
    conditions = [d.id == bindparam("delivery_id"), ready_to_send(now)] + ([allowed()] if only_if_allowed else [])
    return (
        move(DeliveryStatus.QUEUED, DeliveryStatus.SENDING, on=d.__table__)
        .where(*conditions)
        .values(lease_until=bindparam("lease_until", type_=UTCDateTime()), attempts=d.attempts + 1)
        .returning(
            d.id, d.lead_id, d.flow, d.stage, d.step_id, d.kind, d.template, d.to_address, d.attempts,
            select(Lead.status).where(Lead.id == lead_id).scalar_subquery().label("lead_status"),
            enrollment.label("enrollment_status"), end_cause.label("end_cause"), end_reason.label("end_reason"),
            may_follow(lead_id, now).label("may_follow"),
        )
    )


def allowed() -> ColumnElement[bool]:
    """`refusal(...) is None` in SQL, for the delivery being claimed, built from the rule's own tables.

    `domain.delivery.refusal` stays the rule: this only keeps a refused email queued,
    where the transaction that writes why finds it. A lead that cannot be found
    compares as NULL and refuses, as `refusal` does; a missing enrollment refuses
    nothing, as there.
    """
    d, e = Delivery, Enrollment
    lead_status = select(Lead.status).where(Lead.id == d.lead_id).scalar_subquery()
    closed = [e.status == status for status in CLOSED_ENROLLMENT]  # not IN: its list would be expanded at every run
    enrollment_refuses = select(e.id).where(
        e.id == d.enrollment_id,
        or_(*closed, e.end_cause == EndCause.SUPPRESSED),
    ).exists()
    lead_allows = or_(*(
        d.kind == kind if wanted is None else and_(d.kind == kind, lead_status == wanted)
        for kind, wanted in RECIPIENT_STATUS.items()
    ))
    return and_(lead_allows, ~enrollment_refuses)


@cache
def finish_statement(sent: bool) -> Update:
    """`sending` → its outcome, returning whether a person opened or clicked it meanwhile (for the tallies)."""
    d = Delivery
    values: dict[str, Any] = {
        "reason": bindparam("finished_reason"), "lease_until": null(),
        "finished_at": bindparam("outcome_at", type_=UTCDateTime()),
    }
    if sent:
        values.update(sent_at=bindparam("outcome_at", type_=UTCDateTime()), message_id=bindparam("finished_message_id"))
    return (
        move(DeliveryStatus.SENDING, (DeliveryStatus.SENT, DeliveryStatus.FAILED), status=bindparam("finished_status"), on=d.__table__)
        .where(d.id == bindparam("finished_id")).values(**values)
        .returning(d.opened_at, d.clicked_at)
    )


@cache
def record_and_claim_statement(sent: bool, tallied: bool) -> Update:
    """PostgreSQL: an email's record (`finish_statement`, its timeline entry and, when
    `tallied`, its tally) and the next email's claim, as one statement.

    Data-modifying WITH clauses run in the statement's snapshot, like the
    statements they replace in one transaction; the two UPDATEs never touch the
    same row (the claim wants `queued`, the record `sending`). One round trip
    instead of four, which is most of what an email costs the database. Being
    one statement it commits on its own (`HeldConnection.execute_alone`), so its
    claim takes only an email allowed to go.
    """
    finished = finish_statement(sent).cte("finished")
    t = TimelineEntry.__table__
    names = ["lead_id", "at", "flow", "stage", "step_id", "decision", "reason", "detail"]
    noted = insert(t).from_select(
        names, select(*(bindparam(f"noted_{name}", type_=t.c[name].type) for name in names)).select_from(finished)
    ).cte("noted")
    parts = [finished, noted] + ([sent_email_tally(finished).cte("tallied")] if tallied else [])
    return claim_statement(only_if_allowed=True).add_cte(*parts)
