"""What an email template sees: the one list of names the renderer provides.

Sending and the admin's preview both build their context here, so a name a
template uses means the same in a preview as in the email that goes out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from autofunnel.mail.templates import funnel_context


def email_context(
    *,
    lead: Mapping[str, Any],
    flow_slug: str,
    flow_title: str,
    stage: str | None,
    event: Mapping[str, Any] | None,
    deadline: Callable[[str], datetime],
    offer_url: Callable[[str], str],
    countdown_url: Callable[[str], str],
    unsubscribe_url: str,
    postal_address: str | None,
) -> dict[str, Any]:
    return {
        "lead": lead,
        "funnel": funnel_context(slug=flow_slug, title=flow_title, stage=stage or None),
        "event": event,
        "deadline": deadline,
        "offer_url": offer_url,
        "countdown_url": countdown_url,
        "unsubscribe_url": unsubscribe_url,
        "postal_address": postal_address,
    }
