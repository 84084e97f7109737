"""Double opt-in by email: the confirmation email, its link, its one reminder, and the erasure of
leads who never confirm (SPEC.md, "Public": `GET|POST /confirm/<token>`).

The confirmation is a `confirm` delivery queued with the subscription (see
`leads.queue_confirmation`) and sent by the worker like any email, so it goes
exactly once; the claim (`delivery._refusal`) lets a `confirm` delivery go only
to a `pending` lead and refuses every other email to one. Confirming records a
`confirmed` event through `record_events`, which makes the lead active and
starts its funnels: one path, whether the link or the API confirms.

The link's token is signed with the `confirm` purpose and carries when it was
made, so it expires (AUTOFUNNEL_CONFIRM_TOKEN_DAYS) without a table of tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, exists, select
from sqlalchemy.orm import aliased

from autofunnel.domain.statuses import LeadStatus
from autofunnel.domain.model import Flow, Funnel
from autofunnel.errors import BadToken, InvalidInputError, NotFoundError
from autofunnel.mail.render import RenderedEmail, Renderer
from autofunnel.services.events import record_events
from autofunnel.services.inputs import EventInput
from autofunnel.services.leads import (
    CONFIRM_STEP, REMINDER_STEP, RESENT_STEP, erase_pending_leads, find_lead, queue_confirmation,
)
from autofunnel.services.runtime import Runtime
from autofunnel.services.tracking import mask_email
from autofunnel.store.models import Delivery, Lead
from autofunnel.store.types import UTCDateTime

__all__ = [
    "CONFIRM_STEP", "REMINDER_STEP", "ConfirmState", "OptInPass", "confirm", "confirm_state", "confirm_url",
    "consent_text", "opt_in_pass", "render_confirmation", "resend_from_token", "send_confirmation",
]

BUILTIN = Path(__file__).resolve().parent.parent / "mail" / "builtin"
"""The default confirmation email, used when the seller wrote no `templates/<funnel>/confirm.html`."""

RESEND_PAUSE = timedelta(minutes=5)
"""A new confirmation email is not queued within this long of the last one: asking again
and again (or someone else asking for you) sends one email, not a flood."""

_builtin: Renderer | None = None


def consent_text(rt: Runtime, flow: Flow) -> str:
    """What a lead agrees to: the funnel's `consent_text:`, else the project's setting."""
    return (flow.consent_text if isinstance(flow, Funnel) else None) or rt.settings.consent_text


def confirm_url(rt: Runtime, lead_id: int, funnel: str, now: datetime) -> str:
    token = rt.tokens.sign("confirm", [lead_id, funnel, int(now.timestamp())])
    return f"{rt.settings.base_url}/confirm/{token}"


def render_confirmation(rt: Runtime, lead_id: int, flow: Flow, lead: dict[str, Any], *, reminder: bool) -> RenderedEmail:
    """The confirmation email: the seller's `templates/<funnel>/confirm.html` if there is one, else the built-in one.

    Rendered without click tracking or an open pixel: the one link must work as
    written, and a pending lead is not someone to measure yet.
    """
    global _builtin
    context = {
        "lead": lead,
        "funnel": {"slug": flow.slug, "title": flow.title, "stage": None},
        "confirm_url": confirm_url(rt, lead_id, flow.slug, rt.clock.now()),
        "consent_text": consent_text(rt, flow),
        "postal_address": rt.settings.postal_address,
        "reminder": reminder,
        "erase_days": _days_text(rt.settings.pending_erase_days) if rt.settings.pending_erase_days else "some",
    }
    if (rt.renderer.templates_dir / flow.slug / "confirm.html").is_file():
        return rt.renderer.render(flow.slug, "confirm", context)
    if _builtin is None:
        _builtin = Renderer(BUILTIN)
    return _builtin.render("optin", "confirm", context)


def _days_text(days: float) -> str:
    return str(int(days)) if days == int(days) else f"{days:g}"


@dataclass(frozen=True)
class ConfirmState:
    """What a confirmation link stands for, as its page shows it."""

    lead_id: int
    funnel: str
    title: str
    masked_email: str
    status: str
    expired: bool


def _load(rt: Runtime, token: str) -> tuple[int, str, int]:
    payload = rt.tokens.load("confirm", token)
    if (not isinstance(payload, list) or len(payload) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in (payload[0], payload[2]))
            or not isinstance(payload[1], str)):
        raise BadToken()
    return payload[0], payload[1], payload[2]


def confirm_state(rt: Runtime, token: str) -> ConfirmState:
    """Who the link confirms and whether it still can; changes nothing (mail scanners GET every link)."""
    lead_id, funnel, issued = _load(rt, token)
    with rt.db.read() as session:
        lead = session.get(Lead, lead_id)
        if lead is None or lead.status == LeadStatus.ERASED:
            raise BadToken()
        age = rt.clock.now().timestamp() - issued
        flow = rt.project.flows.get(funnel)
        return ConfirmState(
            lead_id, funnel, flow.title if flow is not None else funnel, mask_email(lead.email), lead.status,
            age > rt.settings.confirm_token_days * 86400,
        )


def confirm(rt: Runtime, token: str) -> ConfirmState:
    """Record `confirmed` for the link's lead (once: the event's key is the lead's), if the link is in date."""
    state = confirm_state(rt, token)
    if state.expired or state.status != LeadStatus.PENDING:
        return state
    now = rt.clock.now()
    record_events(rt, [EventInput(
        type="confirmed", at=now, properties={"funnel": state.funnel, "via": "confirmation email"},
        key=f"confirmed:{state.lead_id}", lead_id=state.lead_id,
    )])
    return confirm_state(rt, token)


def resend_from_token(rt: Runtime, token: str) -> ConfirmState:
    """An expired link's "send me a new email": a new confirmation for the same lead and funnel."""
    state = confirm_state(rt, token)
    if state.status == LeadStatus.PENDING:
        send_confirmation(rt, str(state.lead_id), state.funnel)
    return state


def send_confirmation(rt: Runtime, lead: str, funnel: str | None = None) -> int | None:
    """Queue the confirmation email again for a pending lead (the admin's "send again", an expired link).

    `funnel` defaults to the funnel of the lead's first confirmation. Returns the
    queued delivery's id, or None when one was queued less than RESEND_PAUSE ago.
    """
    now = rt.clock.now()
    with rt.db.transaction() as session:
        row = find_lead(session, lead)
        if row.status != LeadStatus.PENDING:
            raise InvalidInputError(f"the lead is {row.status}, not waiting for a confirmation", field="lead", code="not_pending")
        if funnel is None:
            funnel = session.scalars(
                select(Delivery.flow).where(Delivery.lead_id == row.id, Delivery.kind == "confirm").order_by(Delivery.id).limit(1)
            ).first()
        if funnel is None or funnel not in rt.project.flows:
            raise NotFoundError("no funnel to confirm this lead for", field="funnel", code="unknown_funnel")
        recent = session.scalars(
            select(Delivery.id).where(Delivery.lead_id == row.id, Delivery.kind == "confirm", Delivery.created_at > now - RESEND_PAUSE).limit(1)
        ).first()
        if recent is not None:
            return None
        return queue_confirmation(session, row.id, funnel, row.email, now, RESENT_STEP)


@dataclass(frozen=True)
class OptInPass:
    reminded: int
    erased: int


@functools.cache
def _opt_in_statements() -> tuple[Any, Any]:
    """The pass's two look-ups, built once: they run on every scheduler pass."""
    first, later = Delivery, aliased(Delivery)
    cutoff = bindparam("cutoff", type_=UTCDateTime())
    awaiting_reminder = (
        select(first.lead_id, first.flow, Lead.email).join(Lead, Lead.id == first.lead_id)
        .where(
            first.kind == "confirm", first.step_id == CONFIRM_STEP, first.created_at <= cutoff, Lead.status == LeadStatus.PENDING,
            ~exists().where(and_(later.lead_id == first.lead_id, later.kind == "confirm", later.step_id == REMINDER_STEP)),
        )
        .limit(1000)
    )
    stale_pending = select(Lead.id).where(Lead.status == LeadStatus.PENDING, Lead.status_changed_at <= cutoff).limit(1000)
    return awaiting_reminder, stale_pending


def opt_in_pass(rt: Runtime, now: datetime | None = None) -> OptInPass:
    """The scheduler's double opt-in chores: one reminder per pending lead after
    AUTOFUNNEL_CONFIRM_REMINDER_HOURS, and erasure after AUTOFUNNEL_PENDING_ERASE_DAYS."""
    now = now or rt.clock.now()
    settings = rt.settings
    awaiting_reminder, stale_pending = _opt_in_statements()
    reminding, erasing = settings.confirm_reminder_hours > 0, settings.pending_erase_days > 0
    cutoff = {"cutoff": now - timedelta(hours=settings.confirm_reminder_hours)}
    stale_cutoff = {"cutoff": now - timedelta(days=settings.pending_erase_days)}
    due, stale = False, []
    if reminding or erasing:
        # One look for both chores, without SQLite's write lock: on nearly every pass neither has work.
        with rt.db.look() as connection:
            due = reminding and connection.execute(awaiting_reminder, cutoff).first() is not None
            if erasing and not due:
                stale = connection.scalars(stale_pending, stale_cutoff).all()
    reminded = 0
    if due:
        with rt.db.transaction() as session:
            rows = session.execute(awaiting_reminder, cutoff).all()
            seen: set[int] = set()
            for lead_id, funnel, email in rows:
                if lead_id not in seen:
                    seen.add(lead_id)
                    queue_confirmation(session, lead_id, funnel, email, now, REMINDER_STEP)
            reminded = len(seen)
        if erasing:  # read after the reminders' commit, as a lead may have confirmed meanwhile
            with rt.db.read() as session:
                stale = session.scalars(stale_pending, stale_cutoff).all()
    erased = erase_pending_leads(rt, stale, f"never confirmed in {settings.pending_erase_days} days: personal data erased") if stale else 0
    return OptInPass(reminded, erased)
