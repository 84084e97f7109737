"""Who an email is from: one rule for every email a flow sends (funnel emails, notifications,
confirmations, the admin's test sends)."""

from __future__ import annotations

from email.utils import parseaddr
from functools import lru_cache
from urllib.parse import urlsplit

from autofunnel.domain.model import Flow
from autofunnel.services.runtime import Runtime


@lru_cache(maxsize=256)
def address_of(sender: str) -> str:
    """The addr-spec of a funnel's sender; the same few senders are parsed for every email."""
    return parseaddr(sender)[1]


def sender_domain(address: str) -> str:
    return address_of(address).rpartition("@")[2] or "localhost"


def sender_for(rt: Runtime, flow: Flow) -> str:
    """The From of a flow's emails: its `from:`, else AUTOFUNNEL_MAIL_FROM, else a noreply at the base URL's host."""
    if flow.rules.sender:
        return flow.rules.sender
    if rt.settings.mail_from:
        return rt.settings.mail_from
    host = urlsplit(rt.settings.base_url).hostname or "localhost"
    return f"autofunnel <noreply@{host if '.' in host else host + '.localdomain'}>"
