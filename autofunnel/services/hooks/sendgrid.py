"""SendGrid: the Signed Event Webhook's `bounce` and `spamreport` events.

SendGrid signs each POST with ECDSA P-256 over SHA-256 of the timestamp header's
text followed by the raw body (`X-Twilio-Email-Event-Webhook-Timestamp`, signature
base64 DER in `X-Twilio-Email-Event-Webhook-Signature`); the seller pastes the
verification key SendGrid shows (base64 DER, or PEM) into the setting, several
comma-separated while rotating. No tolerance is put on the timestamp: SendGrid
retries for up to three days, and a replayed post is harmless, since each event's
`sg_event_id` makes it a duplicate.

SendGrid classifies a bounce itself: `type: bounce` is a permanent failure (hard),
`type: blocked` a refusal it may retry later (soft). `deferred`, `dropped` and the
engagement events are not bounces and are ignored.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from autofunnel.errors import HookRejected
from autofunnel.services.hooks import Ignored, PurchaseLookup, Request, checked_email, decode_json, event, header, moment
from autofunnel.services.inputs import EventInput

SETTING = "sendgrid_webhook_public_key"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


@lru_cache(maxsize=8)
def public_keys(setting: str) -> tuple[ec.EllipticCurvePublicKey, ...]:
    """The configured verification keys; a key that does not load is a configuration error worth a clear 400."""
    keys = []
    for text in (part.strip() for part in setting.split(",") if part.strip()):
        try:
            if text.startswith("-----BEGIN"):
                key = serialization.load_pem_public_key(text.encode())
            else:
                key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
        except (ValueError, TypeError, binascii.Error):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            keys.append(key)
    return tuple(keys)


def verify(request: Request, secret: str, now: datetime) -> None:
    timestamp = header(request, TIMESTAMP_HEADER)
    try:
        signature = base64.b64decode(header(request, SIGNATURE_HEADER).strip(), validate=True)
    except (ValueError, binascii.Error):
        raise HookRejected(f"the {SIGNATURE_HEADER} header is not base64", field=SIGNATURE_HEADER) from None
    keys = public_keys(secret)
    if not keys:
        raise HookRejected("AUTOFUNNEL_SENDGRID_WEBHOOK_PUBLIC_KEY holds no P-256 public key (paste the verification key SendGrid shows)",
                           field=SIGNATURE_HEADER)
    signed = timestamp.encode() + request.raw
    for key in keys:
        try:
            key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
            return
        except InvalidSignature:
            continue
    raise HookRejected("the SendGrid signature does not match AUTOFUNNEL_SENDGRID_WEBHOOK_PUBLIC_KEY", field=SIGNATURE_HEADER)


def to_events(request: Request, now: datetime, find_purchase: PurchaseLookup) -> list[EventInput] | Ignored:
    body = decode_json(request.raw)
    items = body if isinstance(body, list) else [body]
    events = [mapped for item in items if isinstance(item, dict) and (mapped := _event(item, now)) is not None]
    return events or Ignored("no SendGrid bounce or spam report in the post")


def _event(item: dict[str, Any], now: datetime) -> EventInput | None:
    event_id, email = item.get("sg_event_id"), checked_email(item.get("email"))
    if not isinstance(event_id, str) or not event_id or email is None:
        return None
    properties: dict[str, Any] = {"relay": "sendgrid", "message_id": item.get("sg_message_id")}
    at = moment(item.get("timestamp"))
    kind = item.get("event")
    if kind == "spamreport":
        return event("complained", f"sendgrid:{event_id}", at, now, _clean(properties), email=email)
    if kind == "bounce" and item.get("type", "bounce") in ("bounce", "blocked"):
        properties.update(kind="hard" if item.get("type", "bounce") == "bounce" else "soft", reason=item.get("reason"),
                          status=item.get("status"), classification=item.get("bounce_classification"))
        return event("bounced", f"sendgrid:{event_id}", at, now, _clean(properties), email=email)
    return None


def _clean(properties: dict[str, Any]) -> dict[str, Any]:
    return {k: v[:500] if isinstance(v, str) else v for k, v in properties.items() if isinstance(v, str) and v}
