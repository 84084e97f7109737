"""How a flow's emails go out: who they are from (one rule for funnel emails, notifications,
confirmations and the admin's test sends), whether they carry the open pixel, whether they are DKIM-signed."""

from __future__ import annotations

from email.utils import parseaddr
from functools import lru_cache
from urllib.parse import urlsplit

from autofunnel.domain.model import Flow
from autofunnel.config import Settings


@lru_cache(maxsize=256)
def address_of(sender: str) -> str:
    """The addr-spec of a funnel's sender; the same few senders are parsed for every email."""
    return parseaddr(sender)[1]


def sender_domain(address: str) -> str:
    return address_of(address).rpartition("@")[2] or "localhost"


def sender_of(settings: Settings, flow: Flow) -> str:
    """The From of a flow's emails: its `from:`, else AUTOFUNNEL_MAIL_FROM, else noreply at the base URL's host."""
    if flow.rules.sender:
        return flow.rules.sender
    if settings.mail_from:
        return settings.mail_from
    host = urlsplit(settings.base_url).hostname or "localhost"
    return f"autofunnel <noreply@{host if '.' in host else host + '.localdomain'}>"


def tracks_opens(settings: Settings, flow: Flow) -> bool:
    """Whether a flow's emails carry the open pixel: its `track_opens:`, else AUTOFUNNEL_TRACK_OPENS."""
    return settings.track_opens if flow.rules.track_opens is None else flow.rules.track_opens


def dkim_ready(settings: Settings) -> bool:
    """Whether every email is signed: all three DKIM settings are given (else none is signed)."""
    return bool(settings.dkim_domain and settings.dkim_selector and settings.dkim_key_file)
