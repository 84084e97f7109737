"""Signing webhook payloads the providers' documented ways, for the webhook and garbage tests.

Stripe's signature is made by the official `stripe` library's own code (an independent
implementation of the scheme our check follows); the others by the few lines their
documentation gives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stripe
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from autofunnel.clock import FixedClock
from autofunnel.services.credentials import create_api_key
from autofunnel.services.runtime import Runtime
from autofunnel.store.models import Base
from autofunnel.web import create_app

STRIPE_SECRET = "whsec_test_new_0123456789abcdef"
STRIPE_OLD_SECRET = "whsec_test_old_fedcba9876543210"
SHOPIFY_SECRET = "shpss_test_0123456789abcdef"
POSTMARK_AUTH = "postmark:pm-pass-0123456789"
MAILGUN_KEY = "key-mailgun-0123456789abcdef"


@dataclass
class Hooks:
    app: Flask
    client: FlaskClient
    rt: Runtime
    clock: FixedClock
    api_headers: dict[str, str]

    def rows(self) -> dict[str, int]:
        """The row count of every table: what 'nothing written' is checked against."""
        with self.rt.db.read() as session:
            return {table.name: session.scalar(select(func.count()).select_from(table)) or 0 for table in Base.metadata.sorted_tables}

    def lead(self, email: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/leads/{email}", headers=self.api_headers)
        assert response.status_code == 200, response.json
        return response.json

    def events(self, email: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.lead(email)["events"] if e["type"] == kind]

    def stripe(self, body: dict[str, Any], *, secret: str = STRIPE_SECRET, at: int | None = None, extra: tuple[str, ...] = ()) -> Any:
        payload = json.dumps({"created": self.now(), **body})
        return self.client.post("/hooks/stripe", data=payload, content_type="application/json",
                                headers={"Stripe-Signature": stripe_header(payload, secret, self.now() if at is None else at, extra)})

    def shopify(self, topic: str, body: dict[str, Any], *, webhook_id: str | None = None, secret: str = SHOPIFY_SECRET) -> Any:
        raw = json.dumps(body).encode()
        return self.client.post("/hooks/shopify", data=raw, content_type="application/json", headers={
            "X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": shopify_hmac(raw, secret),
            "X-Shopify-Webhook-Id": webhook_id or secrets.token_hex(8), "X-Shopify-Shop-Domain": "yoga.myshopify.com",
        })

    def postmark(self, body: dict[str, Any], auth: str = POSTMARK_AUTH) -> Any:
        return self.client.post("/hooks/postmark", json=body, headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()})

    def mailgun(self, event_data: dict[str, Any], key: str = MAILGUN_KEY) -> Any:
        return self.client.post("/hooks/mailgun", json=mailgun_body(event_data, key, self.now()))

    def now(self) -> int:
        return int(self.clock.now().timestamp())


def stripe_header(payload: str, secret: str, timestamp: int, extra: tuple[str, ...] = ()) -> str:
    """`t=…,v1=…` as Stripe sends it, the signature computed by stripe-python's own helper."""
    signatures = [stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", key) for key in (secret, *extra)]
    return ",".join([f"t={timestamp}", *(f"v1={sig}" for sig in signatures)])


def shopify_hmac(raw: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()


def mailgun_body(event_data: dict[str, Any], key: str, timestamp: int) -> dict[str, Any]:
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": str(timestamp), "token": token, "signature": signature}, "event-data": event_data}


def make_hooks(project_dir: Path, runtime_factory: Any, tmp_path: Path, broker_url: str, **settings: str) -> Hooks:
    """The example project with every webhook secret set, on a clock at the real present
    (stripe-python checks its 5-minute tolerance against the real time)."""
    clock = FixedClock(datetime.now(UTC).replace(microsecond=0))
    config = {
        "stripe_webhook_secret": f"{STRIPE_SECRET},{STRIPE_OLD_SECRET}", "shopify_webhook_secret": SHOPIFY_SECRET,
        "postmark_webhook_token": POSTMARK_AUTH, "mailgun_webhook_signing_key": MAILGUN_KEY,
        **({"broker_url": broker_url} if broker_url else {}), **settings,
    }
    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", clock, **config)
    _, key = create_api_key(rt.db, clock, "shop")
    app = create_app(runtime=rt)
    return Hooks(app, app.test_client(), rt, clock, {"Authorization": f"Bearer {key}"})


def checkout_session(session_id: str, email: str, *, product: str | None = "mini-course", amount: int = 1900,
                     currency: str = "eur", payment_intent: str = "pi_3MtwBwLkdIwHu7ix28a3tqPa") -> dict[str, Any]:
    """A `checkout.session.completed` event shaped like Stripe's documented example."""
    return {
        "id": f"evt_{secrets.token_hex(12)}", "object": "event", "api_version": "2024-06-20",
        "type": "checkout.session.completed", "livemode": False, "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": {
            "id": session_id, "object": "checkout.session", "mode": "payment", "status": "complete", "payment_status": "paid",
            "amount_subtotal": amount, "amount_total": amount, "currency": currency,
            "customer_details": {"email": email, "name": "Ann Example", "address": {"country": "DE"}},
            "customer_email": None, "metadata": {"product": product} if product else {},
            "payment_intent": payment_intent, "payment_link": "plink_1MoC3ULkdIwHu7ixZjtGpVl2", "created": 1_699_999_000,
            "after_expiration": None, "url": None,
        }},
    }
