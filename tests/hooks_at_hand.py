"""Signing webhook payloads the providers' documented ways, for the webhook and garbage tests.

Stripe's signature is made by the official `stripe` library's own code (an independent
implementation of the scheme our check follows); the others by the few lines their
documentation gives. SendGrid's ECDSA key pair and the SNS signing certificate (self-signed,
RSA) are made here with `cryptography`, as the relays make theirs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import stripe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
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
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(SENDGRID_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
"""The verification key as SendGrid's settings page shows it: base64 of the DER public key."""
SES_TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-bounces"
SNS_CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem"
SNS_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed_pem(key: rsa.RSAPrivateKey, name: str = "sns.amazonaws.com") -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM)


SNS_CERT_PEM = self_signed_pem(SNS_KEY)


@dataclass
class Hooks:
    app: Flask
    client: FlaskClient
    rt: Runtime
    clock: FixedClock
    api_headers: dict[str, str]

    def rows(self) -> dict[str, int]:
        """The row count of every table: what 'nothing written' is checked against (gathered opens and clicks written first)."""
        self.rt.engagements.flush()
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

    def sendgrid(self, events: list[dict[str, Any]], key: ec.EllipticCurvePrivateKey = SENDGRID_KEY) -> Any:
        raw = json.dumps(events).encode()
        timestamp = str(self.now())
        return self.client.post("/hooks/sendgrid", data=raw, content_type="application/json", headers=sendgrid_headers(raw, timestamp, key))

    def ses(self, message: dict[str, Any]) -> Any:
        return self.client.post("/hooks/ses", data=json.dumps(message), content_type="text/plain; charset=UTF-8",
                                headers={"x-amz-sns-message-type": message["Type"], "x-amz-sns-topic-arn": message["TopicArn"]})

    def now(self) -> int:
        return int(self.clock.now().timestamp())


def sendgrid_headers(raw: bytes, timestamp: str, key: ec.EllipticCurvePrivateKey = SENDGRID_KEY) -> dict[str, str]:
    """SendGrid's Signed Event Webhook headers: ECDSA P-256/SHA-256 over timestamp + body, base64 DER."""
    signature = key.sign(timestamp.encode() + raw, ec.ECDSA(hashes.SHA256()))
    return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(), "X-Twilio-Email-Event-Webhook-Timestamp": timestamp}


SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


def sns_message(kind: str, fields: dict[str, Any], *, version: str = "1", key: rsa.RSAPrivateKey = SNS_KEY,
                topic: str = SES_TOPIC, cert_url: str = SNS_CERT_URL) -> dict[str, Any]:
    """An SNS message signed as AWS documents it: the listed keys present, `key\\nvalue\\n` each, RSA
    PKCS#1 v1.5 with SHA1 (SignatureVersion 1) or SHA256 (2)."""
    message = {"Type": kind, "MessageId": secrets.token_hex(16), "TopicArn": topic,
               "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"), **fields}
    text = "".join(f"{name}\n{message[name]}\n" for name in SNS_SIGNED[kind] if name in message).encode()
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text, padding.PKCS1v15(), digest)
    return {**message, "SignatureVersion": version, "Signature": base64.b64encode(signature).decode(), "SigningCertURL": cert_url,
            "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x"}


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
    certs = tmp_path / "sns-certs"
    certs.mkdir(exist_ok=True)
    (certs / SNS_CERT_URL.rsplit("/", 1)[1]).write_bytes(SNS_CERT_PEM)
    config = {
        "stripe_webhook_secret": f"{STRIPE_SECRET},{STRIPE_OLD_SECRET}", "shopify_webhook_secret": SHOPIFY_SECRET,
        "postmark_webhook_token": POSTMARK_AUTH, "mailgun_webhook_signing_key": MAILGUN_KEY,
        "sendgrid_webhook_public_key": SENDGRID_PUBLIC, "ses_topic_arn": SES_TOPIC, "ses_signing_cert_dir": str(certs),
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
