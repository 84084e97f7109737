"""An email as a lead would get it, before it goes out: the admin's preview and test sends.

The template renders through the same renderer and context names as a real
send (`mail.context`), for a real lead or a sample one, at a chosen moment, so
deadlines and offer links are as they would be then. Nothing is tracked or
counted: links point straight at their destinations, there is no open pixel,
and a test send writes no delivery, so no report or condition ever sees it.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from autofunnel.domain.model import Flow, Sequence
from autofunnel.errors import AutofunnelError, NotFoundError
from autofunnel.mail.context import email_context
from autofunnel.mail.countdown import draw_countdown
from autofunnel.mail.message import build_message, format_address
from autofunnel.mail.render import RenderedEmail
from autofunnel.services.delivery import address_of, sender_domain, sender_for
from autofunnel.services.leads import find_lead
from autofunnel.services.runtime import Runtime
from autofunnel.store.models import Deadline, Enrollment, Event

SAMPLE_LEAD = {"email": "ann@example.com", "first_name": "Ann", "fields": {}, "tags": []}
SAMPLE_CART = {
    "cart_id": "sample-cart", "value": 49.0, "checkout_url": "https://shop.example/cart",
    "items": [{"name": "Yoga mat", "quantity": 1, "price": 39.0}, {"name": "Strap", "quantity": 1, "price": 10.0}],
}


@dataclass(frozen=True)
class Preview:
    flow: str
    template: str
    to: str
    at: datetime
    sample: bool
    """True when rendered for the built-in sample lead rather than a real one."""
    subject: str
    preheader: str
    html: str
    text: str


def flow_templates(rt: Runtime, slug: str) -> list[str]:
    """The emails a flow's folder holds (`templates/<slug>/*.html`), by name."""
    rt.flow(slug)
    folder = rt.project.root / "templates" / slug
    return sorted(path.stem for path in folder.glob("*.html")) if folder.is_dir() else []


def preview_email(rt: Runtime, slug: str, template: str, lead_key: str | None = None, at: datetime | None = None) -> Preview:
    """The email `template` of flow `slug` for a lead (or the sample lead) at moment `at` (default now)."""
    flow = rt.flow(slug)
    if template not in flow_templates(rt, slug):
        raise NotFoundError(f"no template {template!r} in templates/{slug}/", field="template", code="unknown_template")
    moment = at or rt.clock.now()
    lead, deadlines, event, to = _facts(rt, flow, lead_key, moment)
    rendered = _render(rt, flow, template, lead, deadlines, event, moment)
    return Preview(slug, template, to, moment, lead_key is None, rendered.subject, rendered.preheader, rendered.html, rendered.text)


def send_test_email(rt: Runtime, preview: Preview, to: str) -> str:
    """Send a preview to `to` now, through the configured mail transport, marked as a test.

    Returns the Message-ID. No delivery row is written: a test is counted
    nowhere, and a second test send is simply another email.
    """
    address = to.strip()
    if "@" not in address or any(c in address for c in "\r\n<>,; "):
        raise AutofunnelError(f"{to!r} is not one email address")
    flow = rt.flow(preview.flow)
    sender = sender_for(rt, flow)
    domain = sender_domain(sender)
    message_id = f"<test.{secrets.token_hex(8)}.autofunnel@{domain}>"
    message = build_message(
        sender=sender, to=format_address(None, address), subject=f"[TEST] {preview.subject}", html=preview.html,
        text=preview.text, message_id=message_id, date=rt.clock.now(), headers=[("X-Autofunnel-Test", "yes")], domain=domain,
    )
    with rt.transport.session() as smtp:
        smtp.send(address_of(sender), address, message)
    return message_id


def _facts(rt: Runtime, flow: Flow, lead_key: str | None, moment: datetime) -> tuple[dict[str, Any], dict[str, datetime], dict[str, Any] | None, str]:
    """The lead as templates see it, its deadlines in this flow, the event behind its latest enrollment, its address."""
    if lead_key is None:
        deadlines = {name: moment + spec.duration for name, spec in flow.deadlines.items()}
        return dict(SAMPLE_LEAD), deadlines, (dict(SAMPLE_CART) if isinstance(flow, Sequence) else {}), SAMPLE_LEAD["email"]
    with rt.db.read() as session:
        row = find_lead(session, lead_key)
        lead = {"email": row.email, "first_name": row.first_name, "fields": row.fields or {}, "tags": row.tags or []}
        deadlines = dict(session.execute(select(Deadline.name, Deadline.due_at).where(Deadline.lead_id == row.id, Deadline.flow == flow.slug)).all())
        event = session.scalar(
            select(Event.properties).join(Enrollment, Enrollment.event_id == Event.id)
            .where(Enrollment.lead_id == row.id, Enrollment.flow == flow.slug).order_by(Enrollment.entered_at.desc()).limit(1)
        )
    for name, spec in flow.deadlines.items():
        deadlines.setdefault(name, moment + spec.duration)
    return lead, deadlines, event or {}, row.email


def _render(rt: Runtime, flow: Flow, template: str, lead: dict[str, Any], deadlines: dict[str, datetime],
            event: dict[str, Any] | None, moment: datetime) -> RenderedEmail:
    def deadline(name: str) -> datetime:
        if name not in deadlines:
            raise AutofunnelError(f"deadline {name!r} is not defined in {flow.slug}")
        return deadlines[name]

    def offer_url(name: str) -> str:
        offer = flow.offers.get(name)
        if offer is None:
            raise AutofunnelError(f"no offer {name!r} in {flow.slug}")
        due = deadlines.get(offer.deadline)
        return offer.url if due is None or moment < due else offer.expired_url

    def countdown_url(name: str) -> str:
        return "data:image/gif;base64," + base64.b64encode(draw_countdown(deadline(name) - moment)).decode()

    context = email_context(
        lead=lead, flow_slug=flow.slug, flow_title=flow.title, stage=None, event=event, deadline=deadline,
        offer_url=offer_url, countdown_url=countdown_url, unsubscribe_url=f"{rt.settings.base_url}/u/preview-only",
        postal_address=rt.settings.postal_address,
    )
    return rt.renderer.render(flow.slug, template, context)


