"""Mailgun: `failed` (permanent → hard, temporary → soft) and `complained` events.

Mailgun puts its signature inside the JSON body (`signature.timestamp`, `.token`,
`.signature` = hex HMAC-SHA256 of timestamp+token under the webhook signing key), so
this is the one provider whose body is read as JSON before the signature is checked;
nothing in it is used until the check passes. A replayed request is harmless: its
event id makes it a duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

from autofunnel.errors import HookRejected, InvalidInputError
from autofunnel.services.hooks import Ignored, PurchaseLookup, Request, checked_email, decode_json, event, moment
from autofunnel.services.inputs import EventInput

SETTING = "mailgun_webhook_signing_key"


def _signature(body: Any) -> tuple[str, str, str] | None:
    block = body.get("signature") if isinstance(body, dict) else None
    if not isinstance(block, dict):
        return None
    parts = (block.get("timestamp"), block.get("token"), block.get("signature"))
    if not all(isinstance(part, (str, int)) and not isinstance(part, bool) for part in parts):
        return None
    return str(parts[0]), str(parts[1]), str(parts[2])


def verify(request: Request, secret: str, now: datetime) -> None:
    try:
        signed = _signature(decode_json(request.raw))
    except InvalidInputError:
        signed = None
    if signed is None:
        raise HookRejected("the body carries no Mailgun signature", field="signature")
    timestamp, token, given = signed
    for key in (part.strip() for part in secret.split(",")):
        mine = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
        if key and hmac.compare_digest(mine.encode(), given.encode("ascii", "replace")):
            return
    raise HookRejected("the Mailgun signature does not match AUTOFUNNEL_MAILGUN_WEBHOOK_SIGNING_KEY", field="signature")


def to_events(request: Request, now: datetime, find_purchase: PurchaseLookup) -> list[EventInput] | Ignored:
    body = decode_json(request.raw)
    data = body.get("event-data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        return Ignored("no event-data")
    kind, event_id = data.get("event"), data.get("id")
    email = checked_email(data.get("recipient"))
    if not isinstance(event_id, str) or not event_id or email is None:
        return Ignored("a Mailgun event without an id or a recipient")
    at = moment(data.get("timestamp"))
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
    properties: dict[str, Any] = {"relay": "mailgun", "message_id": headers.get("message-id")}
    if kind == "complained":
        return [event("complained", f"mailgun:{event_id}", at, now, _clean(properties), email=email)]
    if kind == "failed" and data.get("severity") in ("permanent", "temporary"):
        status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
        properties.update(kind="hard" if data["severity"] == "permanent" else "soft", reason=data.get("reason"),
                          description=status.get("description") or status.get("message"))
        return [event("bounced", f"mailgun:{event_id}", at, now, _clean(properties), email=email)]
    return Ignored(f"Mailgun event {kind!r} is not handled")


def _clean(properties: dict[str, Any]) -> dict[str, Any]:
    return {k: v[:500] if isinstance(v, str) else v for k, v in properties.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}
