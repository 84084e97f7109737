"""Leads: subscribing to a funnel, the lead's full story, and erasure."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Select, bindparam, delete, select, update
from sqlalchemy.orm import Session

from autofunnel.domain.model import Funnel
from autofunnel.domain.report import lead_split_values
from autofunnel.errors import InvalidInputError, NotFoundError
from autofunnel.domain.engine import ended_by_suppression, suppression_reason
from autofunnel.services.enrollments import active_enrollment_ids, end_enrollments, timeline_row, write_timeline
from autofunnel.services.entry import CONFIRM_STEP, Entrant, confirmation_row, enter_first_stage
from autofunnel.services.inputs import SubscribeInput
from autofunnel.services.runtime import Runtime
from autofunnel.services.tallies import regroup_leads
from autofunnel.domain.statuses import DeliveryStatus, EndCause, EnrollmentStatus, LeadStatus
from autofunnel.store.delivery_moves import move
from autofunnel.store.lead_facts import Wanted, load_facts
from autofunnel.store.models import Deadline, Delivery, Enrollment, Event, Lead, StageEntry, TimelineEntry
from autofunnel.store.queries import chunks, insert_ignoring

PURCHASE_KEPT = ("product", "amount", "currency", "order_id")
"""What erasure keeps of a purchase or refund: the anonymous figures reports count."""
ERASURE_KEEPS: Final = {
    "purchase": PURCHASE_KEPT, "refund": PURCHASE_KEPT, "unsubscribed": ("delivery",), "subscribed": ("source",),
}
"""What erasure keeps of each type of event: what the reports count (the email an unsubscribe came
through, the channel a subscription came from), so the report of an erased lead's days stays the same."""
SOURCE_KEPT = ("channel", "utm_source")
"""Of a subscription's source, only what labels its channel (not the referrer or the campaign)."""


@dataclass(frozen=True)
class SubscribeResult:
    lead_id: int
    status: str
    created: bool


def subscribe(rt: Runtime, data: SubscribeInput, *, consent: dict[str, Any]) -> SubscribeResult:
    """Put a lead into a funnel's first stage; a second call for the same funnel changes nothing.

    The welcome email is not sent here: the enrollment is due at once, and the
    next scheduler pass (a second or so under `autofunnel run`) sends it. A lead
    left pending by double opt-in gets its confirmation email queued instead.
    """
    flow = rt.flow(data.funnel)
    if not isinstance(flow, Funnel):
        raise InvalidInputError(f"{data.funnel!r} is a sequence; sequences start on events, not subscriptions", field="funnel", code="not_a_funnel")
    now = rt.clock.now()
    double_opt_in = flow.double_opt_in if flow.double_opt_in is not None else rt.settings.double_opt_in
    with rt.db.transaction() as session:
        lead, created = _find_or_create(session, data, double_opt_in, consent, now)
        session.flush()
        entrant = Entrant(lead.id, lead.email, lead.status, lead_channel(lead.source), data.source or None, known=not created)
        entered = enter_first_stage(session, rt, flow, [entrant], at=data.at, now=now)
        return SubscribeResult(lead.id, lead.status, bool(entered))


REMINDER_STEP = "confirm-reminder"
RESENT_STEP = "confirm-again"


def queue_confirmation(session: Session, lead_id: int, funnel: str, to_address: str, now: datetime, step: str = CONFIRM_STEP) -> int:
    """A double opt-in email queued (see `entry.confirmation_row`); its delivery id."""
    delivery = Delivery(**confirmation_row(lead_id, funnel, to_address, now, step))
    session.add(delivery)
    session.flush()
    return delivery.id


def lead_channel(source: dict[str, Any] | None) -> str | None:
    """The channel a lead came from, as reports group it: its source's `channel`, else its `utm_source`."""
    if not source:
        return None
    for name in ("channel", "utm_source"):
        value = source.get(name)
        if value is not None and str(value) != "":
            return str(value)[:100]
    return None


def _find_or_create(session: Session, data: SubscribeInput, double_opt_in: bool, consent: dict[str, Any], now: datetime) -> tuple[Lead, bool]:
    values = {
        "email": data.email, "first_name": data.first_name, "fields": data.fields, "tags": list(data.tags),
        "timezone": data.timezone, "source": data.source or None, "owner": data.owner,
        "status": LeadStatus.PENDING if double_opt_in else LeadStatus.ACTIVE, "consent": consent,
        "created_at": now, "updated_at": now, "status_changed_at": now,
    }
    created = session.execute(insert_ignoring(session, Lead.__table__, ("email",)).returning(Lead.id), [values]).first()
    lead = session.scalars(_lead_by_email(), {"email": data.email}).one()
    if created is None:
        fields = {**(lead.fields or {}), **data.fields} if data.fields else lead.fields
        regroup_leads(session, {lead.id: lead_split_values(data.owner or lead.owner, fields)}, lambda: _merge(lead, data, now))
    return lead, created is not None


@functools.cache
def _lead_by_email() -> Select[tuple[Lead]]:
    """Built once: every subscription reads its lead back, locked."""
    return select(Lead).where(Lead.email == bindparam("email")).with_for_update()


def _merge(lead: Lead, data: SubscribeInput, now: datetime) -> None:
    """A known lead subscribing again: new details win, tags and fields are added, the first source stays."""
    if lead.status == LeadStatus.ERASED:
        raise InvalidInputError("this lead was erased and cannot be subscribed again with the same record", field="email", code="erased")
    if data.first_name:
        lead.first_name = data.first_name
    if data.fields:
        lead.fields = {**(lead.fields or {}), **data.fields}
    if data.tags:
        lead.tags = list(dict.fromkeys([*(lead.tags or []), *data.tags]))
    if data.timezone:
        lead.timezone = data.timezone
    if data.owner:
        lead.owner = data.owner
    if data.source and not lead.source:
        lead.source = data.source
    lead.updated_at = now


def _anonymous(event: Event) -> dict[str, Any]:
    """An erased lead's event, with only what `ERASURE_KEEPS` keeps of it."""
    kept = {key: value for key, value in (event.properties or {}).items() if key in ERASURE_KEEPS.get(event.type, ())}
    if isinstance(kept.get("source"), dict):
        kept["source"] = {key: value for key, value in kept["source"].items() if key in SOURCE_KEPT}
    return kept


def find_lead(session: Session, key: str) -> Lead:
    """A lead by id (ASCII digits, within a 64-bit id) or by email, case-insensitively.

    `'²'.isdigit()` is true and int() refuses it, and an id past 2**63 makes PostgreSQL
    raise: both are simply no lead (schemathesis found them as 500s).
    """
    key = key.strip()
    if "\x00" in key:  # PostgreSQL cannot even compare text holding NUL
        raise NotFoundError(f"no lead {key!r}", field="lead", code="unknown_lead")
    by_id = key.isascii() and key.isdigit() and len(key) <= 18
    lead = session.get(Lead, int(key)) if by_id else session.scalars(select(Lead).where(Lead.email == key.lower())).first()
    if lead is None:
        raise NotFoundError(f"no lead {key!r}", field="lead", code="unknown_lead")
    return lead


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def lead_view(rt: Runtime, key: str, *, limit: int = 500) -> dict[str, Any]:
    """The lead, its stage per funnel, its events and every step decision with its reason."""
    with rt.db.read() as session:
        lead = find_lead(session, key)
        entries = session.execute(
            select(StageEntry.funnel, StageEntry.stage, StageEntry.position, StageEntry.entered_at, StageEntry.skipped)
            .where(StageEntry.lead_id == lead.id).order_by(StageEntry.funnel, StageEntry.position)
        ).all()
        enrollments = session.execute(
            select(Enrollment).where(Enrollment.lead_id == lead.id).order_by(Enrollment.entered_at, Enrollment.id)
        ).scalars().all()
        facts = load_facts(session, [lead.id], Wanted(deadlines=True, assignments=True))
        assignments = [(flow, name, value) for (_, flow), named in facts.assignments.items() for name, value in named.items()]
        deadlines = [(flow, name, due) for (_, flow), named in facts.deadlines.items() for name, due in named.items()]
        events = session.execute(
            select(Event).where(Event.lead_id == lead.id).order_by(Event.at.desc(), Event.id.desc()).limit(limit)
        ).scalars().all()
        timeline = session.execute(
            select(TimelineEntry).where(TimelineEntry.lead_id == lead.id).order_by(TimelineEntry.at, TimelineEntry.id).limit(limit)
        ).scalars().all()
        deliveries = session.execute(
            select(Delivery).where(Delivery.lead_id == lead.id).order_by(Delivery.created_at, Delivery.id).limit(limit)
        ).scalars().all()
        funnels: dict[str, dict[str, Any]] = {}
        for funnel, stage, position, entered_at, skipped in entries:
            view = funnels.setdefault(funnel, {"funnel": funnel, "stage": None, "stages": []})
            view["stages"].append({"stage": stage, "position": position, "entered_at": _iso(entered_at), "skipped": skipped})
            if not skipped:
                view["stage"] = stage
        for flow, name, value in assignments:
            if name == "holdout" and flow in funnels:
                funnels[flow]["holdout"] = value == "held_out"
        return {
            "id": lead.id, "email": lead.email, "first_name": lead.first_name, "fields": lead.fields, "tags": lead.tags,
            "timezone": lead.timezone, "source": lead.source, "owner": lead.owner, "status": lead.status,
            "consent": lead.consent, "created_at": _iso(lead.created_at),
            "funnels": list(funnels.values()),
            "enrollments": [
                {"flow": e.flow, "kind": e.kind, "stage": e.stage or None, "run": e.run, "status": e.status, "step": e.step_id,
                 "due_at": _iso(e.due_at), "waiting_for": e.waiting_for, "entered_at": _iso(e.entered_at),
                 "ended_at": _iso(e.ended_at), "end_cause": e.end_cause, "end_reason": e.end_reason}
                for e in enrollments
            ],
            "deadlines": [{"flow": flow, "name": name, "at": _iso(due)} for flow, name, due in deadlines],
            "assignments": [{"flow": flow, "name": name, "value": value} for flow, name, value in assignments],
            "events": [{"id": e.key, "type": e.type, "at": _iso(e.at), "properties": e.properties} for e in events],
            "deliveries": [
                {"id": d.id, "flow": d.flow, "stage": d.stage or None, "step": d.step_id, "occurrence": d.occurrence, "kind": d.kind,
                 "template": d.template, "variant": d.variant, "status": d.status, "reason": d.reason,
                 "created_at": _iso(d.created_at), "sent_at": _iso(d.sent_at), "opened_at": _iso(d.opened_at), "clicked_at": _iso(d.clicked_at)}
                for d in deliveries
            ],
            "timeline": _timeline(timeline, entries, enrollments),
        }


def _timeline(rows: Sequence[TimelineEntry], entries: Sequence[Any], enrollments: Sequence[Enrollment]) -> list[dict[str, Any]]:
    """Every decision about the lead in time order: step decisions (each
    enrollment's history), stage entries, enrollment starts and ends, and the
    timeline rows for the rest (status changes, sends and their outcomes)."""
    items: list[tuple[datetime, int, dict[str, Any]]] = []

    def add(moment: datetime, order: int, flow: str | None, stage: str | None, step: str | None, decision: str, reason: str | None) -> None:
        items.append((moment, order, {"at": _iso(moment), "flow": flow, "stage": stage or None, "step": step, "decision": decision, "reason": reason}))

    for funnel, stage, position, entered_at, skipped in entries:
        add(entered_at, 0, funnel, stage, None, "stage", f"skipped stage {stage!r}" if skipped else f"entered stage {stage!r}" if position else f"subscribed; entered stage {stage!r}")
    for e in enrollments:
        if e.kind == "sequence":
            add(e.entered_at, 1, e.flow, None, None, "started", f"sequence started (run {e.run})")
        ended_by_event = e.status in (EnrollmentStatus.ENDED, EnrollmentStatus.STOPPED) or ended_by_suppression(e.end_cause)
        if e.ended_at is not None and ended_by_event:
            add(e.ended_at, 3, e.flow, e.stage, None, e.status, e.end_reason)
    for e in enrollments:
        for at, step, decision, reason in e.history or []:
            add(datetime.fromisoformat(at), 2, e.flow, e.stage, step, decision, reason)
    for t in rows:
        add(t.at, 2, t.flow, t.stage, t.step_id, t.decision, t.reason)
    return [item for _, _, item in sorted(items, key=lambda item: (item[0], item[1]))]


def erase_lead(rt: Runtime, key: str, *, reason: str = "personal data erased on request") -> int:
    """GDPR erasure: personal data goes, anonymous counts (stages reached, sends, purchase figures) stay.

    Everything the lead was in ends and its queued emails are cancelled in the
    same transaction, so nothing is sent to the erased address.
    """
    with rt.db.transaction() as session:
        lead = find_lead(session, key)
        _erase(session, [lead], reason, rt.clock.now())
        return lead.id


def erase_pending_leads(rt: Runtime, lead_ids: Sequence[int], reason: str) -> int:
    """`erase_lead` for the scheduler's stale pending leads, many in one transaction (each lead alone
    cost a transaction and a move of its tallies); a lead that confirmed meanwhile is left alone.
    Returns how many were erased."""
    erased = 0
    for part in chunks(sorted(lead_ids), 500):
        with rt.db.transaction() as session:
            leads = list(session.scalars(select(Lead).where(Lead.id.in_(part), Lead.status == LeadStatus.PENDING).order_by(Lead.id)))
            _erase(session, leads, reason, rt.clock.now())
            erased += len(leads)
    return erased


def _erase(session: Session, leads: Sequence[Lead], reason: str, now: datetime) -> None:
    if not leads:
        return
    ids = [lead.id for lead in leads]

    def forget_fields() -> None:
        for lead in leads:
            lead.fields = {}

    # Their fields go first, their tallies moving with them (before their events lose their details).
    regroup_leads(session, {lead.id: lead_split_values(lead.owner, {}) for lead in leads}, forget_fields)
    end_enrollments(session, active_enrollment_ids(session, ids), EnrollmentStatus.EXITED, EndCause.SUPPRESSED, suppression_reason("erased"), now)
    session.execute(
        move(DeliveryStatus.QUEUED, DeliveryStatus.SKIPPED).where(Delivery.lead_id.in_(ids))
        .values(reason="suppressed: lead erased", lease_until=None)
    )
    session.execute(update(Delivery).where(Delivery.lead_id.in_(ids)).values(to_address="erased"))
    for event in session.scalars(select(Event).where(Event.lead_id.in_(ids))):
        event.properties = _anonymous(event)
    session.execute(update(TimelineEntry).where(TimelineEntry.lead_id.in_(ids)).values(detail=None))
    session.execute(delete(Deadline).where(Deadline.lead_id.in_(ids)))
    for lead in leads:
        lead.email = f"erased-{lead.id}@erased.invalid"
        lead.first_name = None
        lead.tags = []
        lead.timezone = None
        lead.consent = None
        lead.status = LeadStatus.ERASED
        lead.status_changed_at = now
        lead.updated_at = now
    write_timeline(session, [timeline_row(lead.id, now, "erased", reason) for lead in leads])
