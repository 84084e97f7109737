"""One email's bytes, from what its delivery knows: the context, rendering, tracked links,
the pixel, List-Unsubscribe and the MIME message — next to rendering, with no database.

The sending service decides what goes and who it is from; this module only writes the
letter, so a preview, a test and the worker build the same bytes from the same inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autofunnel.domain.model import Flow
from autofunnel.errors import AutofunnelError
from autofunnel.mail.context import email_context
from autofunnel.mail.links import add_open_pixel, rewrite_links
from autofunnel.mail.message import build_message, format_address, message_id_for
from autofunnel.mail.render import RenderedEmail, Renderer
from autofunnel.tokens import Tokens


@dataclass(frozen=True)
class Letter:
    """One queued email as composition needs it."""

    delivery_id: int
    lead_id: int
    kind: str
    """`email` (marketing: tracked links, List-Unsubscribe, the reader's name), `notify` or `confirm`."""
    stage: str
    template: str
    to_address: str
    lead: Mapping[str, Any]
    event: Mapping[str, Any]
    deadlines: Mapping[str, datetime]


@dataclass(frozen=True)
class Sending:
    """Where links point and who signs: the same for every email of a flow."""

    base_url: str
    tokens: Tokens
    sender: str
    """The From address, formatted (a name and an address)."""
    sender_address: str
    sender_domain: str
    track_opens: bool
    postal_address: str | None


def compose_email(letter: Letter, flow: Flow, renderer: Renderer, sending: Sending, now: datetime) -> tuple[bytes, str]:
    """A funnel or sequence email (or a note to the seller's side): its message bytes, not yet
    DKIM-signed, and its Message-ID."""
    base, tokens = sending.base_url, sending.tokens
    unsubscribe_url = f"{base}/u/{tokens.sign('unsubscribe', [letter.lead_id, letter.delivery_id])}"

    def deadline(name: str) -> datetime:
        if name not in letter.deadlines:
            raise AutofunnelError(f"deadline {name!r} has not started for this lead")
        return letter.deadlines[name]

    def offer_url(name: str) -> str:
        if name not in flow.offers:
            raise AutofunnelError(f"no offer {name!r} in {flow.slug}")
        return f"{base}/o/{tokens.sign('offer', [letter.lead_id, flow.slug, name, letter.delivery_id])}"

    def countdown_url(name: str) -> str:
        return f"{base}/countdown/{tokens.sign('countdown', [letter.lead_id, flow.slug, name])}.gif"

    context = email_context(
        lead=dict(letter.lead), flow_slug=flow.slug, flow_title=flow.title, stage=letter.stage, event=dict(letter.event),
        deadline=deadline, offer_url=offer_url, countdown_url=countdown_url, unsubscribe_url=unsubscribe_url,
        postal_address=sending.postal_address,
    )
    rendered = renderer.render(flow.slug, letter.template, context)
    html = rendered.html
    headers: list[tuple[str, str]] = []
    if letter.kind == "email":
        html = rewrite_links(html, lambda url: f"{base}/t/c/{tokens.sign('click', [letter.delivery_id, url])}", keep={unsubscribe_url})
        if sending.track_opens:
            html = add_open_pixel(html, f"{base}/t/o/{tokens.sign('open', [letter.delivery_id])}")
        mailto = f"mailto:{sending.sender_address}?subject=unsubscribe"
        headers = [("List-Unsubscribe", f"<{unsubscribe_url}>, <{mailto}>"), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    named = letter.lead["first_name"] if letter.kind == "email" else None
    return _message(letter, sending, RenderedEmail(rendered.subject, rendered.preheader, html, rendered.text), named, now, headers)


def compose_confirmation(letter: Letter, rendered: RenderedEmail, sending: Sending, now: datetime) -> tuple[bytes, str]:
    """A double opt-in email, already rendered: no pixel, no tracked link, no List-Unsubscribe
    (there is nothing to leave yet)."""
    return _message(letter, sending, rendered, letter.lead["first_name"], now, [])


def _message(
    letter: Letter, sending: Sending, rendered: RenderedEmail, name: str | None, now: datetime, headers: list[tuple[str, str]],
) -> tuple[bytes, str]:
    message_id = message_id_for(letter.delivery_id, sending.sender_domain)
    message = build_message(
        sender=sending.sender, to=format_address(name, letter.to_address), subject=rendered.subject, html=rendered.html,
        text=rendered.text, message_id=message_id, date=now, headers=headers, domain=sending.sender_domain,
    )
    return message, message_id
