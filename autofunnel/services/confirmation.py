"""Double opt-in by email: the confirmation email, its link, its reminder, and the clean-up.

A pending lead's confirmation is a delivery of kind `confirm`, queued in the
transaction that subscribes the lead and sent by the workers like any email,
so "at most once" and the audit trail hold for it too. It is the only email a
pending lead can get (the claim's rule in `services/delivery.py`), it ignores
send windows and frequency caps (it is never scheduled through the engine, and
caps count only funnel emails), and it carries no pixel and no tracked link.

The link's token names the lead, the funnel and when it was made: it works for
AUTOFUNNEL_CONFIRM_LINK_DAYS. `GET /confirm/<token>` only shows a button (mail
scanners fetch every link); `POST` records the `confirmed` event, which makes the
lead active and lets its funnel start, once: the event's id is fixed per lead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from importlib.resources import files
from typing import Any

from jinja2 import Environment, select_autoescape
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from autofunnel.domain.model import Flow
from autofunnel.errors import InvalidInputError, NotFoundError
from autofunnel.mail.context import email_context
from autofunnel.mail.render import RenderedEmail, html_to_text
from autofunnel.mail.templates import CONFIRM_TEMPLATE
from autofunnel.services.events import record_events
from autofunnel.services.inputs import EventInput
from autofunnel.services.runtime import Runtime
from autofunnel.services.tracking import mask_email
from autofunnel.store.models import Delivery, Enrollment, Lead
from autofunnel.tokens import BadToken

STEP_ID = "confirm"
"""The step id of every confirmation delivery (occurrence 1 the first, 2 the reminder, …)."""
TEMPLATE = CONFIRM_TEMPLATE
"""`templates/<funnel>/confirm.html`, when the seller wrote one."""
RESEND_AFTER = timedelta(minutes=5)
"""A new confirmation is refused while the last one is younger than this: no mail-bombing by button."""


@dataclass(frozen=True)
class ConfirmState:
    masked_email: str
    funnel_title: str
    state: str
    """`pending` (the button), `confirmed`, `expired` (offer a new email) or `gone` (erased or suppressed)."""


# Queueing -----------------------------------------------------------------------------


def queue_confirmation(session: Session, *, lead_id: int, enrollment_id: int, funnel: str, to: str, now: datetime) -> int:
    """Queue the next confirmation email of this lead's enrollment; the scheduler hands it out within a pass."""
    occurrence = (session.scalar(
        select(func.max(Delivery.occurrence)).where(Delivery.enrollment_id == enrollment_id, Delivery.step_id == STEP_ID)
    ) or 0) + 1
    row = Delivery(
        lead_id=lead_id, enrollment_id=enrollment_id, flow=funnel, stage="", step_id=STEP_ID, occurrence=occurrence,
        kind="confirm", template=TEMPLATE, to_address=to, status="queued", created_at=now,
    )
    session.add(row)
    session.flush()
    return row.id


def send_confirmation(rt: Runtime, lead_key: str) -> int:
    """Another confirmation email for a pending lead (the admin's button, an expired link's page).

    Refused for a lead that is not pending, and while the previous one is
    younger than RESEND_AFTER, so nobody can flood an inbox by pressing a button.
    """
    from autofunnel.services.leads import find_lead

    now = rt.clock.now()
    with rt.db.transaction() as session:
        lead = find_lead(session, lead_key)
        if lead.status != "pending":
            raise InvalidInputError(f"the lead is {lead.status}, not waiting for a confirmation", field="lead", code="not_pending")
        enrollment = _pending_enrollment(rt, session, lead.id)
        last = session.scalar(select(func.max(Delivery.created_at)).where(Delivery.lead_id == lead.id, Delivery.kind == "confirm"))
        if last is not None and now - last < RESEND_AFTER:
            raise InvalidInputError("a confirmation email was sent to this lead a few minutes ago; wait before sending another", field="lead", code="too_soon")
        return queue_confirmation(session, lead_id=lead.id, enrollment_id=enrollment.id, funnel=enrollment.flow, to=lead.email, now=now)


def _pending_enrollment(rt: Runtime, session: Session, lead_id: int) -> Enrollment:
    """The lead's latest active funnel enrollment waiting for its confirmation."""
    found = session.scalars(
        select(Enrollment).where(Enrollment.lead_id == lead_id, Enrollment.kind == "funnel", Enrollment.status == "active")
        .order_by(Enrollment.entered_at.desc(), Enrollment.id.desc())
    ).first()
    if found is None or found.flow not in rt.project.flows:
        raise InvalidInputError("the lead is in no funnel of this project that waits for a confirmation", field="lead", code="not_pending")
    return found


# The email ----------------------------------------------------------------------------


def confirm_token(rt: Runtime, lead_id: int, funnel: str) -> str:
    return rt.tokens.sign("confirm", [lead_id, funnel, int(rt.clock.now().timestamp())])


def confirmation_email(rt: Runtime, flow: Flow, lead_id: int, lead: dict[str, Any], sender: str) -> RenderedEmail:
    """The seller's `templates/<funnel>/confirm.html`, else the built-in one; no tracking either way."""
    url = f"{rt.settings.base_url}/confirm/{confirm_token(rt, lead_id, flow.slug)}"
    if (rt.project.root / "templates" / flow.slug / f"{TEMPLATE}.html").is_file():
        context = email_context(
            lead=lead, flow_slug=flow.slug, flow_title=flow.title, stage=None, event={},
            deadline=_no_deadline, offer_url=_no_offer, countdown_url=_no_deadline, unsubscribe_url=url,
            postal_address=rt.settings.postal_address,
        )
        return rt.renderer.render(flow.slug, TEMPLATE, {**context, "confirm_url": url})
    subject = f"Please confirm your subscription to {flow.title}"
    html = _builtin().render(
        subject=subject, lead=lead, funnel={"title": flow.title}, confirm_url=url, postal_address=rt.settings.postal_address,
        sender_name=sender.partition("<")[0].strip().strip('"') or None,
        link_days=f"{rt.settings.confirm_link_days:g}",
    )
    return RenderedEmail(subject, "", html, html_to_text(html))


def _no_deadline(name: str) -> Any:
    raise InvalidInputError(f"a confirmation email has no deadline {name!r}")


def _no_offer(name: str) -> str:
    raise InvalidInputError(f"a confirmation email has no offer {name!r}")


@cache
def _builtin() -> Any:
    source = files("autofunnel.mail").joinpath("builtin/confirm.html").read_text(encoding="utf-8")
    return Environment(autoescape=select_autoescape(default=True)).from_string(source)


# The link -----------------------------------------------------------------------------


def _read_token(rt: Runtime, token: str) -> tuple[int, str, int]:
    payload = rt.tokens.load("confirm", token)
    if (not isinstance(payload, list) or len(payload) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in (payload[0], payload[2]))
            or not isinstance(payload[1], str) or payload[0] <= 0):
        raise BadToken()
    return payload[0], payload[1], payload[2]


def confirm_state(rt: Runtime, token: str) -> ConfirmState:
    """What `GET /confirm/<token>` shows; changes nothing."""
    lead_id, funnel, issued = _read_token(rt, token)
    return _state(rt, lead_id, funnel, issued)


def confirm(rt: Runtime, token: str) -> ConfirmState:
    """`POST /confirm/<token>`: the lead confirms (once; a second time changes nothing)."""
    lead_id, funnel, issued = _read_token(rt, token)
    state = _state(rt, lead_id, funnel, issued)
    if state.state == "pending":
        record_events(rt, [EventInput("confirmed", rt.clock.now(), {"via": "email", "funnel": funnel}, key=f"confirmed:{lead_id}", lead_id=lead_id)])
        return ConfirmState(state.masked_email, state.funnel_title, "confirmed")
    return state


def resend(rt: Runtime, token: str) -> ConfirmState:
    """An expired link's page asks for a new email: sent when the lead is still pending."""
    lead_id, funnel, issued = _read_token(rt, token)
    state = _state(rt, lead_id, funnel, issued, honour_expiry=False)
    if state.state == "pending":
        send_confirmation(rt, str(lead_id))
    return state


def _state(rt: Runtime, lead_id: int, funnel: str, issued: int, *, honour_expiry: bool = True) -> ConfirmState:
    with rt.db.read() as session:
        row = session.execute(select(Lead.email, Lead.status).where(Lead.id == lead_id)).first()
    if row is None:
        raise NotFoundError("no such subscription", field="token", code="unknown_lead")
    flow = rt.project.flows.get(funnel)
    title = flow.title if flow is not None else funnel
    masked = mask_email(row.email)
    if row.status == "active":
        return ConfirmState(masked, title, "confirmed")
    if row.status != "pending":
        return ConfirmState(masked, title, "gone")
    age = rt.clock.now().timestamp() - issued
    if honour_expiry and age > rt.settings.confirm_link_days * 86400:
        return ConfirmState(masked, title, "expired")
    return ConfirmState(masked, title, "pending")


# Upkeep: one reminder, and leads that never confirmed -----------------------------------


@dataclass
class UpkeepResult:
    reminded: int = 0
    erased: int = 0

    def lines(self) -> list[str]:
        return ([f"{self.reminded} confirmation reminder(s) queued"] if self.reminded else []) + (
            [f"{self.erased} lead(s) that never confirmed erased"] if self.erased else [])


def confirmation_upkeep(rt: Runtime, *, limit: int = 500) -> UpkeepResult:
    """One reminder for leads still pending AUTOFUNNEL_CONFIRM_REMINDER_HOURS after their only
    confirmation was sent; erase leads pending for AUTOFUNNEL_PENDING_ERASE_DAYS. Runs in each
    scheduler pass, a bounded batch at a time; costs one indexed query when there is nothing to do."""
    from autofunnel.services.leads import erase_lead

    now = rt.clock.now()
    result = UpkeepResult()
    settings = rt.settings
    if settings.confirm_reminder_hours > 0:
        since = now - timedelta(hours=settings.confirm_reminder_hours)
        with rt.db.transaction() as session:
            d = Delivery
            candidates = session.execute(
                select(d.lead_id, d.enrollment_id, d.flow, d.to_address)
                .join(Lead, and_(Lead.id == d.lead_id, Lead.status == "pending"))
                .where(d.kind == "confirm", d.step_id == STEP_ID, d.occurrence == 1, d.status == "sent", d.sent_at <= since)
                .where(~select(Delivery.id).where(Delivery.enrollment_id == d.enrollment_id, Delivery.step_id == STEP_ID, Delivery.occurrence > 1).exists())
                .limit(limit)
            ).all()
            for lead_id, enrollment_id, flow, to in candidates:
                queue_confirmation(session, lead_id=lead_id, enrollment_id=enrollment_id, funnel=flow, to=to, now=now)
            result.reminded = len(candidates)
    if settings.pending_erase_days > 0:
        before = now - timedelta(days=settings.pending_erase_days)
        with rt.db.read() as session:
            stale = session.scalars(select(Lead.id).where(Lead.status == "pending", Lead.created_at <= before).limit(limit)).all()
        for lead_id in stale:
            erase_lead(rt, str(lead_id), reason=f"never confirmed within {settings.pending_erase_days:g} days")
        result.erased = len(stale)
    return result
