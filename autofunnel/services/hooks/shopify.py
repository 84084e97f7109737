"""Shopify: `X-Shopify-Hmac-Sha256` (base64 HMAC-SHA256 of the raw body) checked; orders,
checkouts and refunds mapped, each keyed by `X-Shopify-Webhook-Id`, which Shopify keeps
across its 48 hours of retries."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from decimal import Decimal, InvalidOperation
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

SETTING = "shopify_webhook_secret"
KEY_PREFIX = "shopify:"


def verify(request: Request, secret: str, now: datetime) -> None:
    given = header(request, "X-Shopify-Hmac-Sha256").strip().encode("ascii", "replace")
    for key in (part.strip() for part in secret.split(",")):
        if key and hmac.compare_digest(base64.b64encode(hmac.new(key.encode(), request.raw, hashlib.sha256).digest()), given):
            return
    raise HookRejected("X-Shopify-Hmac-Sha256 does not match the configured secret", field="X-Shopify-Hmac-Sha256")


def _money(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def _number(value: Decimal | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def _text(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    rows = body.get("line_items")
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def _quantity(item: dict[str, Any]) -> int:
    quantity = item.get("quantity", 1)
    return quantity if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity > 0 else 1


def _email(body: dict[str, Any]) -> str | None:
    customer = body.get("customer") if isinstance(body.get("customer"), dict) else {}
    for value in (body.get("email"), body.get("contact_email"), customer.get("email")):
        if (email := checked_email(value)) is not None:
            return email
    return None


def to_events(request: Request, now: datetime, find_purchase: PurchaseLookup) -> list[EventInput] | Ignored:
    topic = header(request, "X-Shopify-Topic").strip()
    webhook_id = header(request, "X-Shopify-Webhook-Id").strip()
    body = decode_json(request.raw)
    if not isinstance(body, dict):
        return Ignored("not a Shopify object")
    key = f"{KEY_PREFIX}{webhook_id}"
    if topic == "orders/create":
        return _order(body, key, now)
    if topic in ("checkouts/create", "checkouts/update"):
        return _checkout(body, key, now)
    if topic == "refunds/create":
        return _refund(body, key, now, find_purchase)
    return Ignored(f"Shopify topic {topic!r} is not handled")


def _order(order: dict[str, Any], key: str, now: datetime) -> list[EventInput] | Ignored:
    """One purchase per line item, so `enter_on: {event: purchase, product: SKU}` sees every product."""
    email = _email(order)
    order_id = _text(order.get("id"))
    if email is None or order_id is None:
        return Ignored("orders/create without a customer email")
    currency = (_text(order.get("currency")) or "").upper() or None
    at = moment(order.get("created_at"))
    events = []
    for index, item in enumerate(_items(order)):
        price = _money(item.get("price"))
        properties = {
            "product": _text(item.get("sku")) or _text(item.get("title")), "amount": _number(price * _quantity(item) if price is not None else None),
            "currency": currency, "order_id": order_id, "quantity": _quantity(item),
        }
        line = _text(item.get("id")) or str(index)
        events.append(event("purchase", f"{key}:{line}", at, now, {k: v for k, v in properties.items() if v is not None}, email=email))
    return events or Ignored("orders/create without line items")


def _checkout(checkout: dict[str, Any], key: str, now: datetime) -> list[EventInput] | Ignored:
    email = _email(checkout)
    token = _text(checkout.get("token"))
    if email is None or token is None:
        return Ignored("checkout without an email yet")
    items = [
        {k: v for k, v in {"product": _text(item.get("sku")) or _text(item.get("title")), "title": _text(item.get("title")),
                           "quantity": _quantity(item), "price": _number(_money(item.get("price")))}.items() if v is not None}
        for item in _items(checkout)
    ]
    properties = {
        "cart_id": token, "items": items, "value": _number(_money(checkout.get("total_price"))),
        "currency": (_text(checkout.get("currency")) or "").upper() or None, "checkout_url": _text(checkout.get("abandoned_checkout_url")),
    }
    at = moment(checkout.get("updated_at")) or moment(checkout.get("created_at"))
    return [event("cart_updated", key, at, now, {k: v for k, v in properties.items() if v is not None}, email=email)]


def _refund(refund: dict[str, Any], key: str, now: datetime, find_purchase: PurchaseLookup) -> list[EventInput] | Ignored:
    """A refund names only its order: the lead is the one whose purchase carried that order id."""
    order_id = _text(refund.get("order_id"))
    purchase = find_purchase(KEY_PREFIX, "order_id", order_id) if order_id else None
    if purchase is None:
        return Ignored("refunds/create for an order we have no purchase of")
    total = Decimal(0)
    currency = None
    transactions = refund.get("transactions")
    for row in transactions if isinstance(transactions, list) else []:
        if isinstance(row, dict) and row.get("kind") == "refund" and row.get("status", "success") == "success":
            total += _money(row.get("amount")) or 0
            currency = currency or _text(row.get("currency"))
    if not total:
        lines = refund.get("refund_line_items")
        for row in lines if isinstance(lines, list) else []:
            if isinstance(row, dict):
                total += _money(row.get("subtotal")) or 0
    properties = {"amount": _number(total), "currency": (currency or "").upper() or purchase.properties.get("currency"), "order_id": order_id}
    return [event("refund", key, moment(refund.get("created_at")), now, {k: v for k, v in properties.items() if v is not None},
                  lead_id=purchase.lead_id)]
