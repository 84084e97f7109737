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

from autofunnel.domain.model import Flow, Notify, Send, Sequence
from autofunnel.errors import AutofunnelError, NotFoundError
from autofunnel.mail.context import email_context
from autofunnel.mail.countdown import draw_countdown
from autofunnel.mail.message import build_message, format_address
from autofunnel.mail.render import RenderedEmail
from autofunnel.services.senders import address_of, sender_domain, sender_of
from autofunnel.services.leads import find_lead
from autofunnel.services.runtime import Runtime
from autofunnel.store.lead_facts import deadlines_of
from autofunnel.store.models import Enrollment, Event

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
    stage: str | None = None
    """The stage whose step sends this template (what `funnel.stage` is when it goes out)."""
    notes: tuple[str, ...] = ()
    """What the preview had to assume, e.g. a deadline that has not started for this lead yet."""


@dataclass(frozen=True)
class TemplateChoice:
    name: str
    stage: str | None
    steps: tuple[str, ...]
    """The ids of the steps that send it (a send, a variant of one, or a notify); empty when none does."""


@dataclass(frozen=True)
class FlowTemplates:
    slug: str
    title: str
    kind: str
    templates: tuple[TemplateChoice, ...]


def flow_templates(rt: Runtime, slug: str) -> list[str]:
    """The emails a flow's folder holds (`templates/<slug>/*.html`), by name."""
    rt.flow(slug)
    folder = rt.project.root / "templates" / slug
    return sorted(path.stem for path in folder.glob("*.html")) if folder.is_dir() else []


def list_templates(rt: Runtime) -> tuple[FlowTemplates, ...]:
    """Every funnel and sequence with its emails, for the preview's picker; flows by slug, emails by name."""
    found = []
    for slug in sorted(rt.project.flows):
        flow = rt.project.flows[slug]
        users = _template_users(flow)
        choices = tuple(
            TemplateChoice(name, users[name][0] if name in users else None, tuple(users[name][1]) if name in users else ())
            for name in flow_templates(rt, slug)
        )
        found.append(FlowTemplates(slug, flow.title, flow.kind, choices))
    return tuple(found)


def _template_users(flow: Flow) -> dict[str, tuple[str | None, list[str]]]:
    """Template name → (the stage of the first step sending it, every step id sending it)."""
    users: dict[str, tuple[str | None, list[str]]] = {}
    for stage, steps in flow.step_lists:
        for step in steps:
            action = step.action
            names = action.templates if isinstance(action, Send) else (action.template,) if isinstance(action, Notify) else ()
            for name in names:
                users.setdefault(name, (stage or None, []))[1].append(step.id)
    return users


def preview_email(rt: Runtime, slug: str, template: str, lead_key: str | None = None, at: datetime | None = None) -> Preview:
    """The email `template` of flow `slug` for a lead (or the sample lead) at moment `at` (default now)."""
    flow = rt.flow(slug)
    if template not in flow_templates(rt, slug):
        raise NotFoundError(f"no template {template!r} in templates/{slug}/", field="template", code="unknown_template")
    moment = at or rt.clock.now()
    stage = _template_users(flow).get(template, (None, []))[0]
    lead, deadlines, event, to, assumed = _facts(rt, flow, stage, lead_key, moment)
    notes: list[str] = []
    rendered = _render(rt, flow, stage, template, lead, _Deadlines(deadlines, assumed, notes), event, moment)
    return Preview(
        slug, template, to, moment, lead_key is None, rendered.subject, rendered.preheader, rendered.html, rendered.text, stage, tuple(notes),
    )


def send_test_email(rt: Runtime, preview: Preview, to: str) -> str:
    """Send a preview to `to` now, through the configured mail transport, marked as a test.

    Returns the Message-ID. No delivery row is written: a test is counted
    nowhere, and a second test send is simply another email.
    """
    address = to.strip()
    if "@" not in address or any(c in address for c in "\r\n<>,; "):
        raise AutofunnelError(f"{to!r} is not one email address")
    flow = rt.flow(preview.flow)
    sender = sender_of(rt.settings, flow)
    domain = sender_domain(sender)
    message_id = f"<test.{secrets.token_hex(8)}.autofunnel@{domain}>"
    message = build_message(
        sender=sender, to=format_address(None, address), subject=f"[TEST] {preview.subject}", html=preview.html,
        text=preview.text, message_id=message_id, date=rt.clock.now(), headers=[("X-Autofunnel-Test", "yes")], domain=domain,
    )
    with rt.transport.session() as smtp:
        smtp.send(address_of(sender), address, message)
    return message_id


def _facts(
    rt: Runtime, flow: Flow, stage: str | None, lead_key: str | None, moment: datetime,
) -> tuple[dict[str, Any], dict[str, datetime], dict[str, Any], str, set[str]]:
    """The lead as a sent email's template sees it (`delivery._read_leads`), its deadlines in
    this flow, the event behind its enrollment in the template's stage, its address, and the
    deadlines that had to be assumed (not started yet: as if they started at the moment)."""
    if lead_key is None:
        deadlines = {name: moment + spec.duration for name, spec in flow.deadlines.items()}
        return dict(SAMPLE_LEAD), deadlines, (dict(SAMPLE_CART) if isinstance(flow, Sequence) else {}), SAMPLE_LEAD["email"], set(deadlines)
    with rt.db.read() as session:
        row = find_lead(session, lead_key)
        lead = {"email": row.email, "first_name": row.first_name, "fields": dict(row.fields or {}), "tags": list(row.tags or []), "timezone": row.timezone}
        deadlines = dict(deadlines_of(session, [row.id]).get((row.id, flow.slug), {}))
        enrollment = select(Event.properties).join(Enrollment, Enrollment.event_id == Event.id).where(Enrollment.lead_id == row.id, Enrollment.flow == flow.slug)
        if stage is not None and not isinstance(flow, Sequence):
            enrollment = enrollment.where(Enrollment.stage == stage)
        event = session.scalar(enrollment.order_by(Enrollment.entered_at.desc(), Enrollment.id.desc()).limit(1))
    assumed = {name for name in flow.deadlines if name not in deadlines}
    for name in assumed:
        deadlines[name] = moment + flow.deadlines[name].duration
    return lead, deadlines, dict(event or {}), row.email, assumed


@dataclass
class _Deadlines:
    """The deadlines a preview renders with, noting each assumed one the template uses."""

    moments: dict[str, datetime]
    assumed: set[str]
    notes: list[str]

    def get(self, name: str) -> datetime | None:
        if name in self.assumed:
            note = f"deadline {name!r} has not started for this lead; shown as if it started at the chosen moment"
            if note not in self.notes:
                self.notes.append(note)
        return self.moments.get(name)


def preview_unsubscribe_url(rt: Runtime) -> str:
    """The unsubscribe link of a preview or a test: a page that unsubscribes nobody (its token does not load)."""
    return f"{rt.settings.base_url}/u/preview-only"


def _render(rt: Runtime, flow: Flow, stage: str | None, template: str, lead: dict[str, Any], deadlines: _Deadlines,
            event: dict[str, Any] | None, moment: datetime) -> RenderedEmail:
    def deadline(name: str) -> datetime:
        due = deadlines.get(name)
        if due is None:
            raise AutofunnelError(f"deadline {name!r} is not defined in {flow.slug}")
        return due

    def offer_url(name: str) -> str:
        offer = flow.offers.get(name)
        if offer is None:
            raise AutofunnelError(f"no offer {name!r} in {flow.slug}")
        due = deadlines.get(offer.deadline)
        return offer.url if due is None or moment < due else offer.expired_url

    def countdown_url(name: str) -> str:
        return "data:image/gif;base64," + base64.b64encode(draw_countdown(deadline(name) - moment)).decode()

    context = email_context(
        lead=lead, flow_slug=flow.slug, flow_title=flow.title, stage=stage, event=event, deadline=deadline,
        offer_url=offer_url, countdown_url=countdown_url, unsubscribe_url=preview_unsubscribe_url(rt),
        postal_address=rt.settings.postal_address,
    )
    return rt.renderer.render(flow.slug, template, context)


