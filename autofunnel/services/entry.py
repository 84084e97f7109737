"""Entering leads into a funnel's first stage: the one rule that `subscribe` (one
lead) and `leads import` (a chunk of thousands) share, inside the caller's transaction.

A lead entering writes its stage entry, its `subscribed` event, its holdout draw,
its enrollment (due at once: the next scheduler pass sends the first step), its
confirmation email when it is pending under double opt-in, the timeline rows
that say so, and the report's tallies. Written set-based, one statement per
table whatever the number of leads, so one lead and a chunk of an import go
through exactly the same statements.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from autofunnel.domain.statuses import DeliveryStatus, LeadStatus
from autofunnel.domain.model import Funnel
from autofunnel.services.enrollments import new_enrollment, timeline_row, write_timeline
from autofunnel.services.runtime import Runtime
from autofunnel.services.tallies import Scope, count_events, count_sources, count_stage_entries, ids_in, of_lead
from autofunnel.services.versions import current_version_ids
from autofunnel.store.models import Assignment, Delivery, Enrollment, Event, StageEntry
from autofunnel.store.queries import Unindexed, among, among_param, bulk_insert, chunks, insert_returning, is_postgres

CONFIRM_STEP = "confirm"
CONFIRM_QUEUED = "confirmation email: the lead is pending until they confirm"


@dataclass(frozen=True)
class Entrant:
    """A lead about to enter, as its lead row stands once found or created."""

    lead_id: int
    email: str
    status: str
    channel: str | None
    """The channel reports group it under (`leads.lead_channel` of the lead's source)."""
    source: dict[str, Any] | None
    """The source given with this subscription, recorded on its `subscribed` event."""
    known: bool
    """Whether the lead existed before: only then can purchases already recorded count for the funnel."""


def random_key(lead_id: int) -> str:
    return uuid.uuid4().hex


def confirmation_row(lead_id: int, funnel: str, to_address: str, now: datetime, step: str = CONFIRM_STEP) -> dict[str, Any]:
    """A double opt-in email, a delivery of its own kind, `confirm`.

    It is due at once and belongs to no enrollment, so no send window, quiet day
    or frequency cap holds it; the claim sends a `confirm` delivery only to a
    lead still `pending`, and the worker sends it exactly once like any email.
    """
    return {
        "lead_id": lead_id, "enrollment_id": None, "flow": funnel, "stage": "", "step_id": step, "occurrence": 1, "kind": "confirm",
        "template": "confirm", "variant": None, "to_address": to_address, "status": DeliveryStatus.QUEUED, "created_at": now,
    }


def enter_first_stage(
    session: Session, rt: Runtime, flow: Funnel, entrants: Sequence[Entrant], *, at: datetime, now: datetime,
    event_key: Callable[[int], str] = random_key,
) -> set[int]:
    """Enter the leads into `flow`'s first stage at `at`; those already in it are left alone.

    Returns the ids of the leads that entered. `event_key` names each lead's
    `subscribed` event: a fresh key per call for a subscription, a key derived
    from the lead for an import, so running an import again writes nothing twice.
    """
    if not entrants:
        return set()
    first = flow.stages[0]
    entries = insert_returning(session, StageEntry.__table__, [
        {
            "lead_id": e.lead_id, "funnel": flow.slug, "stage": first.name, "position": 0, "entered_at": at, "skipped": False,
            "cohort_at": at, "channel": e.channel, "since_previous_s": None, "since_first_s": None,
        }
        for e in entrants
    ], ("id", "lead_id"), conflict=("lead_id", "funnel", "stage"))
    if not entries:
        return set()
    by_id = {e.lead_id: e for e in entrants}
    entered = sorted({lead_id for _, lead_id in entries})
    events = insert_returning(session, Event.__table__, [
        {
            "lead_id": lead_id, "key": event_key(lead_id), "type": "subscribed",
            "properties": {"funnel": flow.slug, **({"source": by_id[lead_id].source} if by_id[lead_id].source else {})},
            "at": at, "received_at": now,
        }
        for lead_id in entered
    ], ("id", "lead_id"), conflict=("key",))
    event_of = {lead_id: event_id for event_id, lead_id in events}
    known = [event_id for event_id, lead_id in events if by_id[lead_id].known]
    if known:  # a known lead's purchases in its other funnels have a new source to share with
        count_sources(session, ids_scope(session, known), flow.slug)
    held: set[int] = set()
    if flow.holdout > 0:
        draws = {lead_id: rt.rng.random() < flow.holdout for lead_id in entered}
        held = {lead_id for lead_id, out in draws.items() if out}
        bulk_insert(session, Assignment.__table__, [
            {"lead_id": lead_id, "flow": flow.slug, "name": "holdout", "value": "held_out" if out else "treated", "assigned_at": now}
            for lead_id, out in draws.items()
        ], conflict=("lead_id", "flow", "name"))
    version = current_version_ids(session, [flow], now)[flow.slug]
    bulk_insert(session, Enrollment.__table__, [
        new_enrollment(lead_id, flow, first.name, run=1, at=at, now=now, version_id=version, event_id=event_of.get(lead_id))
        for lead_id in entered
    ], conflict=("lead_id", "flow", "stage", "run"))
    pending = [lead_id for lead_id in entered if by_id[lead_id].status == LeadStatus.PENDING]
    bulk_insert(session, Delivery.__table__, [confirmation_row(lead_id, flow.slug, by_id[lead_id].email, now) for lead_id in pending])
    timeline: list[dict[str, Any]] = []
    waiting = set(pending)
    for lead_id in entered:
        if lead_id in held:
            timeline.append(timeline_row(lead_id, now, "holdout", f"in the {flow.holdout:.0%} holdout: gets none of this funnel's emails", flow=flow.slug))
        if lead_id in waiting:
            timeline.append(timeline_row(lead_id, now, "queued", CONFIRM_QUEUED, flow=flow.slug, step_id=CONFIRM_STEP))
    write_timeline(session, timeline)
    count_stage_entries(session, ids_scope(session, [entry_id for entry_id, _ in entries]))
    # Purchases recorded before the subscription but made after it (a late import) count for the funnel now,
    # and their refunds: looked for among the known leads that have any (a statement PostgreSQL plans
    # afresh each time costs 45 ms, where most known leads have bought nothing).
    known_leads = [lead_id for lead_id in entered if by_id[lead_id].known]
    for lead_id in _with_purchases_or_refunds(session, known_leads):
        count_events(session, of_lead(lead_id), funnel=flow.slug)
    return set(entered)


def _with_purchases_or_refunds(session: Session, lead_ids: list[int]) -> list[int]:
    # The type unindexed on SQLite: the leads' events, not every purchase, are the few rows (see `Unindexed`).
    found: set[int] = set()
    for part in chunks(lead_ids, 500):
        found.update(session.scalars(
            select(Event.lead_id).where(among(session, Event.lead_id, part), Unindexed(Event.type).in_(("purchase", "refund"))).distinct()
        ))
    return sorted(found)


def ids_scope(session: Session, ids: list[int]) -> Scope:
    """The rows with these ids; on PostgreSQL as one array parameter (`= ANY`), whose plan does not
    grow with the chunk: 2000 ids as an expanded IN list took the tally insert 0.8 s a chunk."""
    if not is_postgres(session):
        return ids_in(ids)
    return Scope("ids_array", lambda entity: among_param(entity.id, "scope_ids", pg=True), {"scope_ids": sorted(set(ids))})
