"""Stripe: `Stripe-Signature` checked on the raw body; completed, expired checkouts and refunds mapped.

Stripe signs `"{t}.{raw body}"` with HMAC-SHA256 under the endpoint's secret and sends
`t=…,v1=…` (several `v1=` while a secret is being rolled); we accept any of our
configured secrets (comma-separated) and refuse a timestamp more than 5 minutes away.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from decimal import Decimal
from typing import Any

from autofunnel.services.hooks import (
    HookRejected,
    Ignored,
    PurchaseLookup,
    Request,
    checked_email,
    decode_json,
    event,
    header,
    moment,
)
from autofunnel.services.inputs import EventInput

SETTING = "stripe_webhook_secret"
TOLERANCE_S = 300
KEY_PREFIX = "stripe:"

ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())
"""Stripe's amounts are in the currency's smallest unit: cents, but whole yen, and thousandths of a dinar."""


def major_units(amount: Any, currency: str) -> float | None:
    """An amount in Stripe's minor units as the number a seller reads (1999 EUR → 19.99, 1999 JPY → 1999)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        return None
    divisor = 1 if currency in ZERO_DECIMAL else 1000 if currency in THREE_DECIMAL else 100
    value = Decimal(amount) / divisor
    return int(value) if value == value.to_integral_value() else float(value)


def verify(request: Request, secret: str, now: datetime) -> None:
    signed = header(request, "Stripe-Signature")
    stamp: int | None = None
    given: list[str] = []
    for part in signed.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) < 12:
            stamp = int(value)
        elif name == "v1":
            given.append(value)
    if stamp is None or not given:
        raise HookRejected("the Stripe-Signature header has no timestamp or no v1 signature", field="Stripe-Signature")
    if abs(now.timestamp() - stamp) > TOLERANCE_S:
        raise HookRejected("the Stripe-Signature timestamp is more than 5 minutes away; replayed or a wrong clock", field="Stripe-Signature")
    payload = f"{stamp}.".encode() + request.raw
    expected = [hmac.new(key.strip().encode(), payload, hashlib.sha256).hexdigest() for key in secret.split(",") if key.strip()]
    if not any(hmac.compare_digest(mine.encode(), theirs.encode("ascii", "replace")) for mine in expected for theirs in given):
        raise HookRejected("no Stripe-Signature matches a configured secret", field="Stripe-Signature")


def _object(body: Any) -> tuple[str, str, dict[str, Any], dict[str, Any]] | None:
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    kind, event_id = body.get("type"), body.get("id")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict) or not isinstance(kind, str) or not isinstance(event_id, str) or not event_id:
        return None
    previous = data.get("previous_attributes")
    return kind, event_id, data["object"], previous if isinstance(previous, dict) else {}


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _product(session: dict[str, Any]) -> str | None:
    """`metadata.product`, else the first expanded line item's price `lookup_key` (Stripe sends
    line items only when the endpoint asks for them, so metadata is the reliable way)."""
    metadata = session.get("metadata")
    if isinstance(metadata, dict) and (name := _text(metadata.get("product"))):
        return name
    items = session.get("line_items")
    rows = items.get("data") if isinstance(items, dict) else None
    for item in rows if isinstance(rows, list) else []:
        price = item.get("price") if isinstance(item, dict) else None
        if isinstance(price, dict) and (key := _text(price.get("lookup_key"))):
            return key
    return None


def _email(obj: dict[str, Any], *paths: tuple[str, ...]) -> str | None:
    for path in paths:
        value: Any = obj
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if (email := checked_email(value)) is not None:
            return email
    return None


def to_events(request: Request, now: datetime, find_purchase: PurchaseLookup) -> list[EventInput] | Ignored:
    body = decode_json(request.raw)
    parsed = _object(body)
    if parsed is None:
        return Ignored("not a Stripe event object")
    kind, event_id, obj, previous = parsed
    key = f"{KEY_PREFIX}{event_id}"
    at = moment(body.get("created"))
    currency = (_text(obj.get("currency")) or "").upper()
    if kind == "checkout.session.completed":
        email = _email(obj, ("customer_details", "email"), ("customer_email",))
        session_id = _text(obj.get("id"))
        if email is None or session_id is None:
            return Ignored("checkout.session.completed without a customer email")
        properties: dict[str, Any] = {"product": _product(obj), "amount": major_units(obj.get("amount_total"), currency),
                                      "currency": currency or None, "order_id": session_id}
        if payment_intent := _text(obj.get("payment_intent")):
            properties["payment_intent"] = payment_intent
        return [event("purchase", key, at, now, {k: v for k, v in properties.items() if v is not None}, email=email)]
    if kind == "checkout.session.expired":
        email = _email(obj, ("customer_details", "email"), ("customer_email",))
        session_id = _text(obj.get("id"))
        if email is None or session_id is None:
            return Ignored("checkout.session.expired without a customer email")
        recovery = obj.get("after_expiration")
        url = recovery.get("recovery") if isinstance(recovery, dict) else None
        properties = {"cart_id": session_id, "value": major_units(obj.get("amount_total"), currency), "currency": currency or None,
                      "product": _product(obj), "checkout_url": _text(url.get("url")) if isinstance(url, dict) else None}
        return [event("checkout_abandoned", key, at, now, {k: v for k, v in properties.items() if v is not None}, email=email)]
    if kind == "charge.refunded":
        return _refund(obj, previous, key, currency, at, now, find_purchase)
    return Ignored(f"Stripe event type {kind!r} is not handled")


def _refund(charge: dict[str, Any], previous: dict[str, Any], key: str, currency: str, at: datetime | None, now: datetime,
            find_purchase: PurchaseLookup) -> list[EventInput] | Ignored:
    """`amount` is what this event refunded: the charge's total refunded minus what it was before
    (`previous_attributes`), so two partial refunds are two amounts, not a running total twice."""
    total = charge.get("amount_refunded")
    before = previous.get("amount_refunded", 0)
    refunded = total - before if isinstance(total, int) and isinstance(before, int) and not isinstance(total, bool) else None
    properties: dict[str, Any] = {"amount": major_units(refunded, currency), "currency": currency or None}
    metadata = charge.get("metadata") if isinstance(charge.get("metadata"), dict) else {}
    payment_intent = _text(charge.get("payment_intent"))
    purchase = find_purchase(KEY_PREFIX, "payment_intent", payment_intent) if payment_intent else None
    order_id = _text(metadata.get("order_id")) or (purchase.properties.get("order_id") if purchase else None)
    properties.update(order_id=order_id, product=purchase.properties.get("product") if purchase else None, payment_intent=payment_intent)
    properties = {k: v for k, v in properties.items() if v is not None}
    email = _email(charge, ("billing_details", "email"), ("receipt_email",))
    if email is not None:
        return [event("refund", key, at, now, properties, email=email)]
    if purchase is not None:
        return [event("refund", key, at, now, properties, lead_id=purchase.lead_id)]
    return Ignored("charge.refunded with no email and no recorded purchase of its payment")
