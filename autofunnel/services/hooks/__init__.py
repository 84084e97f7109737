"""Webhooks from shops and mail relays, turned into events (SPEC.md "HTTP API", DESIGN.md "Webhooks and forms").

Every provider is one module here with the same three parts: the setting that holds its
secret, `verify` (the provider's own signature or token, checked on the raw bytes before
anything is parsed), and `to_events` (its payload mapped to our events, each keyed by the
provider's event id). `receive_webhook` runs them and hands the events to `record_events`,
so deduplication, time order and "nothing partly written" are the API's, in one place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from sqlalchemy import select

from autofunnel.domain.statuses import LeadStatus
from autofunnel.errors import HookNotConfigured, HookRejected, InvalidInputError, UnknownHook
from autofunnel.services.events import record_events
from autofunnel.services.inputs import EventInput, normalize_email
from autofunnel.services.runtime import Runtime
from autofunnel.store.models import Event, Lead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What a webhook request brought, as the web shell received it."""

    raw: bytes
    headers: Mapping[str, str]
    query: Mapping[str, str]


@dataclass(frozen=True)
class Ignored:
    """A payload that is fine but not for us (an event type we do not map, a cart without an email)."""

    reason: str


@dataclass(frozen=True)
class Purchase:
    """A purchase already recorded, found again for a refund that names only the order or payment."""

    lead_id: int
    properties: dict[str, Any]


PurchaseLookup = Callable[[str, str, Any], Purchase | None]
"""`(key_prefix, property, value)` → the newest stored purchase whose property has that value."""


@dataclass(frozen=True)
class HookResult:
    accepted: int
    duplicates: int
    ignored: str | None = None


def _providers() -> dict[str, ModuleType]:
    from autofunnel.services.hooks import mailgun, postmark, sendgrid, ses, shopify, stripe

    return {"stripe": stripe, "shopify": shopify, "postmark": postmark, "mailgun": mailgun, "sendgrid": sendgrid, "ses": ses}


HOOK_NAMES = ("stripe", "shopify", "postmark", "mailgun", "sendgrid", "ses")

_logged_ignored: set[tuple[str, str]] = set()


def decode_json(raw: bytes) -> Any:
    """The verified body as JSON; a provider that signed garbage still gets a 400, not a 500."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInputError("the body is not valid JSON (or nested too deep)", code="bad_json") from None
    return _without_nul(body) if b"\\u0000" in raw else body


def _without_nul(value: Any) -> Any:
    """NUL characters dropped from every text: PostgreSQL stores none, and a signed payload
    refused for one would be retried by the provider for days."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def receive_webhook(rt: Runtime, name: str, request: Request) -> HookResult:
    """Check, map and record one webhook call.

    A refused signature raises before the body is read as JSON; an event type we
    do not handle is answered as received (providers retry anything but 2xx) and
    logged once per type and process.
    """
    provider = _providers().get(name)
    if provider is None:
        raise UnknownHook(f"no webhook named {name!r}; known: {', '.join(HOOK_NAMES)}")
    secret = getattr(rt.settings, provider.SETTING)
    if not secret:
        raise HookNotConfigured(provider.SETTING)
    now = rt.clock.now()
    context = {"rt": rt} if getattr(provider, "USES_RUNTIME", False) else {}  # SES: its certificate cache and settings
    provider.verify(request, secret, now, **context)
    mapped = provider.to_events(request, now, lambda prefix, prop, value: _find_purchase(rt, prefix, prop, value), **context)
    if isinstance(mapped, Ignored):
        if (name, mapped.reason) not in _logged_ignored:
            _logged_ignored.add((name, mapped.reason))
            log.info("%s webhook ignored: %s (logged once per process)", name, mapped.reason)
        return HookResult(0, 0, mapped.reason)
    result = record_events(rt, mapped)
    return HookResult(result.accepted, result.duplicates)


def _find_purchase(rt: Runtime, key_prefix: str, prop: str, value: Any) -> Purchase | None:
    with rt.db.read() as session:
        row = session.execute(
            select(Event.lead_id, Event.properties)
            .join(Lead, Lead.id == Event.lead_id)
            .where(Event.type == "purchase", Event.key.startswith(key_prefix, autoescape=True),
                   Event.properties[prop].as_string() == str(value), Lead.status != LeadStatus.ERASED)
            .order_by(Event.at.desc(), Event.id.desc()).limit(1)
        ).first()
    return None if row is None else Purchase(row.lead_id, dict(row.properties or {}))


def checked_email(value: Any) -> str | None:
    """The address as the API stores it, or None when the payload has none we can use.

    A signed payload with no usable address is ignored rather than refused: the
    provider would retry a 400 for days, and the retries would carry the same address.
    """
    try:
        return normalize_email(value)
    except InvalidInputError:
        return None


def event(kind: str, key: str, at: datetime | None, now: datetime, properties: dict[str, Any], *,
          email: str | None = None, lead_id: int | None = None) -> EventInput:
    """One of our events from a webhook, keyed by the provider's id.

    Dated by the provider's own time when it sent one, but never after `now`: a
    provider's clock a little ahead must not make a real purchase a refused one.
    """
    moment = now if at is None else min(at, now)
    return EventInput(kind, moment, properties, key=key[:200], email=None if lead_id else email, lead_id=lead_id)


def moment(value: Any) -> datetime | None:
    """A provider's timestamp (ISO 8601 text or Unix seconds) as aware UTC, or None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed.astimezone(UTC) if parsed.tzinfo else None
    return None


def header(request: Request, name: str) -> str:
    """A header's value, or a refusal naming it when missing."""
    value = request.headers.get(name)
    if not value:
        raise HookRejected(f"the {name} header is missing", field=name)
    return value
