"""Postmark: bounce and spam-complaint webhooks, authenticated by basic auth or a token.

Postmark signs nothing; its documented protection is basic auth in the webhook URL
(`https://user:pass@…/hooks/postmark`). With a setting of `user:pass` we require that;
with a plain token we require `?token=…` in the URL (or basic auth with it as password).
"""

from __future__ import annotations

import base64
import hmac
from datetime import datetime

from autofunnel.errors import HookRejected
from autofunnel.services.hooks import Ignored, PurchaseLookup, Request, checked_email, decode_json, event, moment
from autofunnel.services.inputs import EventInput

SETTING = "postmark_webhook_token"

HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked", "DMARCPolicy"})
SOFT = frozenset({"Transient", "SoftBounce", "DnsError", "Unknown", "AutoResponder", "ChallengeVerification"})
"""Postmark's bounce `Type`s that say the address will not (HARD) or could not this time (SOFT) take mail;
the rest (Subscribe, AddressChange, OpenRelayTest, VirusNotification, InboundError …) are not bounces."""


def _basic(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def verify(request: Request, secret: str, now: datetime) -> None:
    given = _basic(request)
    if ":" in secret:
        user, _, password = secret.partition(":")
        if given is not None and hmac.compare_digest(given[0].encode(), user.encode()) & hmac.compare_digest(given[1].encode(), password.encode()):
            return
    else:
        offered = [request.query.get("token", ""), given[1] if given else ""]
        if any(value and hmac.compare_digest(value.encode(), secret.encode()) for value in offered):
            return
    raise HookRejected("the Postmark webhook's credentials do not match AUTOFUNNEL_POSTMARK_WEBHOOK_TOKEN", field="Authorization")


def to_events(request: Request, now: datetime, find_purchase: PurchaseLookup) -> list[EventInput] | Ignored:
    body = decode_json(request.raw)
    if not isinstance(body, dict):
        return Ignored("not a Postmark record")
    record, kind, record_id = body.get("RecordType"), body.get("Type"), body.get("ID")
    email = checked_email(body.get("Email"))
    if isinstance(record_id, bool) or not isinstance(record_id, (int, str)) or email is None:
        return Ignored("a Postmark record without an ID or an email")
    properties = {"relay": "postmark", "message_id": body.get("MessageID"), "description": body.get("Description")}
    if record == "SpamComplaint" or kind in ("SpamComplaint", "SpamNotification"):
        at = moment(body.get("BouncedAt"))
        return [event("complained", f"postmark:complaint:{record_id}", at, now, _clean(properties), email=email)]
    if record == "Bounce" and (kind in HARD or kind in SOFT):
        properties["kind"] = "hard" if kind in HARD else "soft"
        properties["type"] = kind
        return [event("bounced", f"postmark:bounce:{record_id}", moment(body.get("BouncedAt")), now, _clean(properties), email=email)]
    return Ignored(f"Postmark record {record!r} of type {kind!r} is not handled")


def _clean(properties: dict[str, object]) -> dict[str, object]:
    return {k: v[:500] if isinstance(v, str) else v for k, v in properties.items() if v is not None and isinstance(v, (str, int))}
