"""Shop and mail-relay webhooks (SPEC.md "HTTP API"): signed payloads in, our events out.

Every refused call is checked against the row count of every table: a bad signature,
a stale timestamp or an unknown secret writes nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import stripe

from hooks_at_hand import (
    MAILGUN_KEY,
    STRIPE_OLD_SECRET,
    STRIPE_SECRET,
    Hooks,
    checkout_session,
    make_hooks,
    mailgun_body,
    stripe_header,
)

pytestmark = pytest.mark.db

TEST_BROKER_URL = os.environ.get("AUTOFUNNEL_TEST_BROKER_URL", "")


@pytest.fixture
def hooks(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> Hooks:
    return make_hooks(project_dir, runtime_factory, tmp_path, TEST_BROKER_URL)


def subscribe(h: Hooks, email: str) -> None:
    response = h.client.post("/api/v1/subscribe", json={"email": email, "funnel": "yoga"}, headers=h.api_headers)
    assert response.status_code == 201, response.json
    confirmed = h.client.post("/api/v1/events", json={"type": "confirmed", "email": email}, headers=h.api_headers)
    assert confirmed.status_code == 202


# Stripe --------------------------------------------------------------------------------


def test_our_stripe_header_is_one_stripe_python_accepts() -> None:
    payload = json.dumps(checkout_session("cs_test_1", "ann@example.com"))
    now = int(time.time())
    event = stripe.Webhook.construct_event(payload, stripe_header(payload, STRIPE_SECRET, now), STRIPE_SECRET)
    assert event["data"]["object"]["id"] == "cs_test_1"


def test_a_completed_checkout_is_a_purchase_that_moves_the_lead_on_once(hooks: Hooks) -> None:
    subscribe(hooks, "ann@example.com")
    hooks.clock.advance(timedelta(minutes=1))
    body = checkout_session("cs_test_a1", "Ann@Example.com", product="mini-course", amount=1999)
    first = hooks.stripe(body)
    assert first.status_code == 200 and first.json == {"accepted": 1, "duplicates": 0}
    (purchase,) = hooks.events("ann@example.com", "purchase")
    assert purchase["properties"] == {"product": "mini-course", "amount": 19.99, "currency": "EUR", "order_id": "cs_test_a1",
                                      "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa"}
    assert hooks.lead("ann@example.com")["funnels"][0]["stage"] == "tripwire"
    rows = hooks.rows()
    again = hooks.stripe(body)  # Stripe retries: same event id
    assert again.status_code == 200 and again.json == {"accepted": 0, "duplicates": 1}
    assert hooks.rows() == rows


def test_zero_decimal_currencies_and_the_lookup_key_of_an_expanded_line_item(hooks: Hooks) -> None:
    body = checkout_session("cs_test_jpy", "kenji@example.com", product=None, amount=1999, currency="jpy")
    body["data"]["object"]["line_items"] = {"object": "list", "data": [{"id": "li_1", "price": {"id": "price_1", "lookup_key": "full-course"}, "quantity": 1}]}
    assert hooks.stripe(body).status_code == 200
    (purchase,) = hooks.events("kenji@example.com", "purchase")
    assert purchase["properties"]["amount"] == 1999 and purchase["properties"]["currency"] == "JPY"
    assert purchase["properties"]["product"] == "full-course"


def test_stripe_secret_rotation_accepts_either_secret_and_several_v1(hooks: Hooks) -> None:
    old = hooks.stripe(checkout_session("cs_old", "old@example.com"), secret=STRIPE_OLD_SECRET)
    assert old.status_code == 200 and old.json["accepted"] == 1
    both = hooks.stripe(checkout_session("cs_both", "both@example.com"), secret="whsec_someone_elses", extra=(STRIPE_SECRET,))
    assert both.status_code == 200 and both.json["accepted"] == 1


@pytest.mark.parametrize("case", ["wrong secret", "stale", "future", "missing", "no v1", "tampered body", "garbage header"])
def test_a_bad_stripe_signature_is_400_and_writes_nothing(hooks: Hooks, case: str) -> None:
    rows = hooks.rows()
    body = checkout_session("cs_bad", "mallory@example.com")
    payload = json.dumps({"created": hooks.now(), **body})
    now = hooks.now()
    headers = {
        "wrong secret": stripe_header(payload, "whsec_unknown_secret", now),
        "stale": stripe_header(payload, STRIPE_SECRET, now - 301),
        "future": stripe_header(payload, STRIPE_SECRET, now + 301),
        "no v1": f"t={now},v0=abc",
        "tampered body": stripe_header(payload, STRIPE_SECRET, now),
        "garbage header": "t=x,v1=\x00\u00e9",
    }
    sent = payload.replace("mallory", "eve") if case == "tampered body" else payload
    response = hooks.client.post("/hooks/stripe", data=sent.encode(), content_type="application/json",
                                 headers={"Stripe-Signature": headers[case]} if case in headers else {})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"]["code"] == "bad_signature"
    assert hooks.rows() == rows


def test_a_re_serialised_body_fails_the_check(hooks: Hooks) -> None:
    """The signature is over the bytes sent: the same JSON with other spacing is another body."""
    payload = json.dumps({"created": hooks.now(), **checkout_session("cs_sp", "sp@example.com")})
    header = stripe_header(payload, STRIPE_SECRET, hooks.now())
    compact = json.dumps(json.loads(payload), separators=(",", ":"))
    assert hooks.client.post("/hooks/stripe", data=compact, content_type="application/json", headers={"Stripe-Signature": header}).status_code == 400
    assert hooks.client.post("/hooks/stripe", data=payload, content_type="application/json", headers={"Stripe-Signature": header}).status_code == 200


def test_a_refund_finds_its_order_through_the_payment_intent(hooks: Hooks) -> None:
    hooks.stripe(checkout_session("cs_r1", "rita@example.com", amount=4900, payment_intent="pi_rita"))
    charge = {"id": "ch_1", "object": "charge", "amount": 4900, "amount_refunded": 1000, "currency": "eur", "refunded": False,
              "payment_intent": "pi_rita", "billing_details": {"email": None}, "receipt_email": None, "metadata": {}}
    event = {"id": "evt_refund_1", "object": "event", "type": "charge.refunded",
             "data": {"object": charge, "previous_attributes": {"amount_refunded": 0, "refunded": False}}}
    assert hooks.stripe(event).json == {"accepted": 1, "duplicates": 0}
    second = {**event, "id": "evt_refund_2", "data": {"object": {**charge, "amount_refunded": 4900, "refunded": True},
                                                      "previous_attributes": {"amount_refunded": 1000}}}
    assert hooks.stripe(second).json["accepted"] == 1
    refunds = hooks.events("rita@example.com", "refund")
    assert sorted(r["properties"]["amount"] for r in refunds) == [10, 39]
    assert {r["properties"]["order_id"] for r in refunds} == {"cs_r1"}


def test_an_expired_checkout_is_checkout_abandoned_with_its_recovery_url(hooks: Hooks) -> None:
    session = checkout_session("cs_exp", "carl@example.com")["data"]["object"]
    session.update(status="expired", payment_status="unpaid",
                   after_expiration={"recovery": {"enabled": True, "url": "https://buy.stripe.com/r/live_abc", "allow_promotion_codes": False}})
    assert hooks.stripe({"id": "evt_exp", "object": "event", "type": "checkout.session.expired", "data": {"object": session}}).json["accepted"] == 1
    (abandoned,) = hooks.events("carl@example.com", "checkout_abandoned")
    assert abandoned["properties"]["checkout_url"] == "https://buy.stripe.com/r/live_abc"
    assert abandoned["properties"]["cart_id"] == "cs_exp"


def test_an_unhandled_stripe_type_is_200_and_writes_nothing(hooks: Hooks) -> None:
    rows = hooks.rows()
    response = hooks.stripe({"id": "evt_other", "object": "event", "type": "customer.created", "data": {"object": {"id": "cus_1"}}})
    assert response.status_code == 200 and "not handled" in response.json["ignored"]
    assert hooks.rows() == rows


def test_a_webhook_without_its_secret_is_503_naming_the_setting(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> None:
    bare = make_hooks(project_dir, runtime_factory, tmp_path, TEST_BROKER_URL, stripe_webhook_secret="", shopify_webhook_secret="")
    response = bare.stripe(checkout_session("cs_x", "x@example.com"))
    assert response.status_code == 503 and response.json["error"]["field"] == "stripe_webhook_secret"
    assert "AUTOFUNNEL_STRIPE_WEBHOOK_SECRET" in response.json["error"]["message"]
    assert bare.client.post("/hooks/nosuch", data=b"{}").status_code == 404


# Shopify -------------------------------------------------------------------------------


def shopify_order(order_id: int, email: str) -> dict[str, Any]:
    """Shaped like Shopify's documented orders/create example (the fields we read and some we do not)."""
    return {
        "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}", "email": email, "contact_email": email,
        "created_at": "2026-01-10T11:00:00-05:00", "currency": "EUR", "total_price": "239.00", "name": "#9999",
        "line_items": [
            {"id": 866550311766439020, "sku": "full-course", "title": "Yoga full course", "price": "199.00", "quantity": 1, "variant_id": 808950810},
            {"id": 141249953214522974, "sku": "", "title": "Yoga mat", "price": "20.00", "quantity": 2, "variant_id": 808950811},
        ],
        "customer": {"id": 115310627314723954, "email": email, "first_name": "Bob"},
    }


def test_a_shopify_order_is_one_purchase_per_line_item(hooks: Hooks) -> None:
    response = hooks.shopify("orders/create", shopify_order(820982911946154508, "bob@example.com"), webhook_id="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
    assert response.status_code == 200 and response.json == {"accepted": 2, "duplicates": 0}
    purchases = sorted(hooks.events("bob@example.com", "purchase"), key=lambda e: e["properties"]["amount"])
    assert [p["properties"] for p in purchases] == [
        {"product": "Yoga mat", "amount": 40, "currency": "EUR", "order_id": "820982911946154508", "quantity": 2},
        {"product": "full-course", "amount": 199, "currency": "EUR", "order_id": "820982911946154508", "quantity": 1},
    ]
    again = hooks.shopify("orders/create", shopify_order(820982911946154508, "bob@example.com"), webhook_id="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
    assert again.json == {"accepted": 0, "duplicates": 2}


def test_a_shopify_checkout_is_a_cart_update_that_starts_the_cart_sequence(hooks: Hooks) -> None:
    checkout = {
        "id": 450789469, "token": "2a1ace52255252df566af0faaedfbfa7", "email": "cara@example.com", "currency": "EUR",
        "created_at": "2026-01-10T11:00:00Z", "updated_at": "2026-01-10T11:05:00Z", "total_price": "398.00",
        "abandoned_checkout_url": "https://yoga.myshopify.com/1/checkouts/recover/2a1ace52",
        "line_items": [{"sku": "full-course", "title": "Yoga full course", "price": "199.00", "quantity": 2, "variant_id": 1}],
    }
    assert hooks.shopify("checkouts/update", checkout).json["accepted"] == 1
    (cart,) = hooks.events("cara@example.com", "cart_updated")
    assert cart["properties"] == {"cart_id": "2a1ace52255252df566af0faaedfbfa7",
                                  "items": [{"product": "full-course", "title": "Yoga full course", "quantity": 2, "price": 199}],
                                  "value": 398, "currency": "EUR", "checkout_url": "https://yoga.myshopify.com/1/checkouts/recover/2a1ace52"}
    assert any(e["flow"] == "abandoned-cart" for e in hooks.lead("cara@example.com")["enrollments"])


def test_a_shopify_refund_reaches_the_buyer_of_its_order(hooks: Hooks) -> None:
    hooks.shopify("orders/create", shopify_order(450789469, "dora@example.com"))
    refund = {"id": 509562969, "order_id": 450789469, "created_at": "2026-01-11T10:00:00Z", "note": "wrong size",
              "refund_line_items": [{"id": 104689539, "quantity": 1, "line_item_id": 866550311766439020, "subtotal": 199.0}],
              "transactions": [{"id": 179259969, "kind": "refund", "status": "success", "amount": "199.00", "currency": "EUR"}]}
    assert hooks.shopify("refunds/create", refund).json["accepted"] == 1
    (event,) = hooks.events("dora@example.com", "refund")
    assert event["properties"] == {"amount": 199, "currency": "EUR", "order_id": "450789469"}


def test_a_bad_shopify_hmac_is_400_and_writes_nothing(hooks: Hooks) -> None:
    rows = hooks.rows()
    assert hooks.shopify("orders/create", shopify_order(1, "eve@example.com"), secret="not-the-secret").status_code == 400
    raw = json.dumps(shopify_order(1, "eve@example.com")).encode()
    missing = hooks.client.post("/hooks/shopify", data=raw, content_type="application/json", headers={"X-Shopify-Topic": "orders/create"})
    assert missing.status_code == 400 and missing.json["error"]["field"] == "X-Shopify-Hmac-Sha256"
    assert hooks.rows() == rows
    ignored = hooks.shopify("products/update", {"id": 1})
    assert ignored.status_code == 200 and "not handled" in ignored.json["ignored"]
    assert hooks.rows() == rows


# Relays --------------------------------------------------------------------------------


def postmark_bounce(record_id: int, email: str, kind: str = "HardBounce") -> dict[str, Any]:
    """Postmark's documented bounce webhook example."""
    return {
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": record_id, "Type": kind, "TypeCode": 1, "Name": "Hard bounce",
        "Tag": "Test", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Metadata": {"a_key": "a_value"}, "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "Test bounce details", "Email": email, "From": "sender@example.com", "BouncedAt": "2026-01-10T16:33:54.9070259Z",
        "DumpAvailable": True, "Inactive": True, "CanActivate": True, "Subject": "Test subject", "Content": "<Full dump of bounce>",
    }


def test_a_postmark_hard_bounce_suppresses_the_lead_and_a_complaint_too(hooks: Hooks) -> None:
    subscribe(hooks, "hb@example.com")
    subscribe(hooks, "sc@example.com")
    response = hooks.postmark(postmark_bounce(4323372036854775807, "hb@example.com"))
    assert response.status_code == 200 and response.json["accepted"] == 1
    lead = hooks.lead("hb@example.com")
    assert lead["status"] == "bounced"
    assert hooks.events("hb@example.com", "bounced")[0]["properties"]["kind"] == "hard"
    assert hooks.postmark(postmark_bounce(4323372036854775807, "hb@example.com")).json["duplicates"] == 1
    complaint = {"RecordType": "SpamComplaint", "MessageStream": "outbound", "ID": 42, "Type": "SpamComplaint", "TypeCode": 512,
                 "Email": "sc@example.com", "BouncedAt": "2026-01-10T16:33:54Z", "MessageID": "00000000-0000-0000-0000-000000000000"}
    assert hooks.postmark(complaint).json["accepted"] == 1
    assert hooks.lead("sc@example.com")["status"] == "complained"


def test_postmark_credentials_are_required(hooks: Hooks, project_dir: Path, runtime_factory: Any, tmp_path: Path) -> None:
    rows = hooks.rows()
    assert hooks.postmark(postmark_bounce(1, "x@example.com"), auth="postmark:wrong").status_code == 400
    assert hooks.client.post("/hooks/postmark", json=postmark_bounce(1, "x@example.com")).status_code == 400
    assert hooks.rows() == rows
    tokened = make_hooks(project_dir, runtime_factory, tmp_path, TEST_BROKER_URL, postmark_webhook_token="tok-0123456789abcdef")
    assert tokened.client.post("/hooks/postmark?token=nope", json=postmark_bounce(2, "y@example.com")).status_code == 400
    assert tokened.client.post("/hooks/postmark?token=tok-0123456789abcdef", json=postmark_bounce(2, "y@example.com")).json["accepted"] == 1


def mailgun_failed(email: str, severity: str) -> dict[str, Any]:
    """Mailgun's documented `failed` event-data."""
    return {
        "id": secrets.token_urlsafe(16), "event": "failed", "severity": severity, "reason": "generic", "timestamp": 1521233195.375624,
        "recipient": email, "log-level": "error" if severity == "permanent" else "warn",
        "delivery-status": {"code": 550 if severity == "permanent" else 452, "message": "No such user", "description": ""},
        "message": {"headers": {"message-id": "20180316.215714.1.abc@example.com", "to": email, "subject": "Hi"}},
    }


def test_three_soft_bounces_in_a_row_suppress_and_a_delivery_between_resets_the_count(hooks: Hooks) -> None:
    subscribe(hooks, "soft@example.com")
    subscribe(hooks, "reset@example.com")
    for n in range(3):
        hooks.clock.advance(timedelta(minutes=1))
        assert hooks.mailgun({**mailgun_failed("soft@example.com", "temporary"), "timestamp": hooks.now()}).json["accepted"] == 1
        assert hooks.lead("soft@example.com")["status"] == ("bounced" if n == 2 else "active")
    for kind in ("soft", "soft", "delivered", "soft", "soft"):
        hooks.clock.advance(timedelta(minutes=1))
        if kind == "delivered":
            posted = hooks.client.post("/api/v1/events", json={"type": "delivered", "email": "reset@example.com"}, headers=hooks.api_headers)
            assert posted.status_code == 202
        else:
            assert hooks.mailgun({**mailgun_failed("reset@example.com", "temporary"), "timestamp": hooks.now()}).json["accepted"] == 1
    assert hooks.lead("reset@example.com")["status"] == "active"


def test_mailgun_permanent_failures_and_complaints_suppress_and_bad_signatures_write_nothing(hooks: Hooks) -> None:
    subscribe(hooks, "perm@example.com")
    event = mailgun_failed("perm@example.com", "permanent")
    assert hooks.mailgun(event).json == {"accepted": 1, "duplicates": 0}
    assert hooks.mailgun(event).json == {"accepted": 0, "duplicates": 1}
    assert hooks.lead("perm@example.com")["status"] == "bounced"
    complaint = {"id": "ncV2XwymRUKbPek_MIM-Gw", "event": "complained", "timestamp": hooks.now(), "recipient": "comp@example.com"}
    assert hooks.mailgun(complaint).json["accepted"] == 1
    assert hooks.lead("comp@example.com")["status"] == "complained"
    rows = hooks.rows()
    forged = mailgun_body(mailgun_failed("perm2@example.com", "permanent"), "not-" + MAILGUN_KEY, hooks.now())
    assert hooks.client.post("/hooks/mailgun", json=forged).status_code == 400
    assert hooks.client.post("/hooks/mailgun", data=b"\x00\xff not json", content_type="application/json").status_code == 400
    assert hooks.rows() == rows
    assert hooks.mailgun({"id": "x1", "event": "delivered", "recipient": "perm@example.com"}).json["ignored"]


# SendGrid ------------------------------------------------------------------------------


def sendgrid_event(email: str, event: str, **extra: Any) -> dict[str, Any]:
    """An event as SendGrid's Event Webhook documents it."""
    return {"email": email, "timestamp": int(time.time()) - 60, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>", "event": event,
            "category": ["cat facts"], "sg_event_id": secrets.token_urlsafe(16), "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            **extra}


def test_sendgrid_bounces_by_its_own_classification_and_spam_reports_suppress(hooks: Hooks) -> None:
    for email in ("hard@example.com", "blocked@example.com", "spam@example.com"):
        subscribe(hooks, email)
    hard = sendgrid_event("hard@example.com", "bounce", type="bounce", reason="500 unknown recipient", status="5.0.0",
                          bounce_classification="Invalid Address")
    blocked = sendgrid_event("blocked@example.com", "bounce", type="blocked", reason="421 try later", status="4.0.0")
    spam = sendgrid_event("spam@example.com", "spamreport")
    noise = [sendgrid_event("hard@example.com", "delivered"), sendgrid_event("blocked@example.com", "deferred"),
             sendgrid_event("spam@example.com", "open")]
    response = hooks.sendgrid([hard, blocked, spam, *noise])
    assert response.status_code == 200 and response.json == {"accepted": 3, "duplicates": 0}
    assert hooks.sendgrid([hard, spam]).json == {"accepted": 0, "duplicates": 2}  # SendGrid's retry: deduplicated by sg_event_id
    assert [e["properties"]["kind"] for e in hooks.events("hard@example.com", "bounced")] == ["hard"]
    assert [e["properties"]["kind"] for e in hooks.events("blocked@example.com", "bounced")] == ["soft"]
    assert hooks.lead("hard@example.com")["status"] == "bounced"
    assert hooks.lead("blocked@example.com")["status"] == "active"  # one soft bounce is not three
    assert hooks.lead("spam@example.com")["status"] == "complained"
    assert hooks.sendgrid([sendgrid_event("hard@example.com", "delivered")]).json["ignored"]


def test_a_bad_sendgrid_signature_is_400_and_writes_nothing(hooks: Hooks) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from hooks_at_hand import sendgrid_headers

    subscribe(hooks, "sg@example.com")
    rows = hooks.rows()
    raw = json.dumps([sendgrid_event("sg@example.com", "bounce", type="bounce")]).encode()
    good = sendgrid_headers(raw, str(hooks.now()))
    forged = sendgrid_headers(raw, str(hooks.now()), ec.generate_private_key(ec.SECP256R1()))
    cases = {
        "another key": forged,
        "another timestamp": {**good, "X-Twilio-Email-Event-Webhook-Timestamp": str(hooks.now() + 1)},
        "a changed body": good,
        "no signature": {"X-Twilio-Email-Event-Webhook-Timestamp": str(hooks.now())},
        "not base64": {**good, "X-Twilio-Email-Event-Webhook-Signature": "***"},
    }
    for case, headers in cases.items():
        body = raw.replace(b"bounce", b"bounc3", 1) if case == "a changed body" else raw
        answer = hooks.client.post("/hooks/sendgrid", data=body, content_type="application/json", headers=headers)
        assert answer.status_code == 400, case
    assert hooks.rows() == rows
    assert hooks.client.post("/hooks/sendgrid", data=raw, content_type="application/json", headers=good).json["accepted"] == 1


# Amazon SES through SNS ----------------------------------------------------------------


def ses_bounce(emails: list[str], bounce_type: str = "Permanent", feedback: str | None = None) -> str:
    """The Message of an SES bounce notification, as AWS documents it."""
    return json.dumps({
        "notificationType": "Bounce",
        "bounce": {"bounceType": bounce_type, "bounceSubType": "General" if bounce_type == "Permanent" else "MailboxFull",
                   "bouncedRecipients": [{"emailAddress": e, "action": "failed", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}
                                         for e in emails],
                   "timestamp": "2026-01-10T16:33:54.000Z", "feedbackId": feedback or f"0100{secrets.token_hex(20)}-000000",
                   "remoteMtaIp": "127.0.2.0", "reportingMTA": "dsn; a27-23.smtp-out.us-west-2.amazonses.com"},
        "mail": {"timestamp": "2026-01-10T16:33:50.000Z", "source": "shop@example.com", "messageId": "0000014a6c5f4f5b-2e6f0c1a",
                 "destination": emails},
    })


def ses_complaint(email: str) -> str:
    return json.dumps({
        "notificationType": "Complaint",
        "complaint": {"complainedRecipients": [{"emailAddress": email}], "timestamp": "2026-01-10T16:40:00.000Z",
                      "feedbackId": f"0100{secrets.token_hex(20)}-000000", "complaintFeedbackType": "abuse", "userAgent": "Yahoo!-Mail-Feedback/2.0"},
        "mail": {"timestamp": "2026-01-10T16:33:50.000Z", "source": "shop@example.com", "messageId": "0000014a6c5f4f5b-2e6f0c1b",
                 "destination": [email]},
    })


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_bounces_and_complaints_through_sns_signature_versions_1_and_2(hooks: Hooks, version: str) -> None:
    from hooks_at_hand import sns_message

    for email in ("p1@example.com", "p2@example.com", "t@example.com", "c@example.com"):
        subscribe(hooks, email)
    permanent = sns_message("Notification", {"Message": ses_bounce(["p1@example.com", "p2@example.com"])}, version=version)
    assert hooks.ses(permanent).json == {"accepted": 2, "duplicates": 0}
    assert hooks.ses(permanent).json == {"accepted": 0, "duplicates": 2}  # SNS delivers at least once
    transient = sns_message("Notification", {"Message": ses_bounce(["t@example.com"], "Transient"), "Subject": "Amazon SES Email Event"},
                            version=version)
    assert hooks.ses(transient).json["accepted"] == 1
    assert hooks.ses(sns_message("Notification", {"Message": ses_complaint("c@example.com")}, version=version)).json["accepted"] == 1
    assert [hooks.lead(e)["status"] for e in ("p1@example.com", "p2@example.com", "t@example.com", "c@example.com")] == \
        ["bounced", "bounced", "active", "complained"]
    assert [e["properties"]["kind"] for e in hooks.events("t@example.com", "bounced")] == ["soft"]
    delivery = sns_message("Notification", {"Message": json.dumps({"notificationType": "Delivery", "mail": {}})}, version=version)
    assert hooks.ses(delivery).json["ignored"]


def test_a_forged_or_foreign_sns_message_is_refused_and_writes_nothing(hooks: Hooks) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from hooks_at_hand import SNS_CERT_URL, sns_message

    subscribe(hooks, "x@example.com")
    rows = hooks.rows()
    body = {"Message": ses_bounce(["x@example.com"])}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tampered = sns_message("Notification", body)
    tampered["Message"] = ses_bounce(["x@example.com"], feedback="changed")
    refused = {
        "signed by another key": sns_message("Notification", body, key=other_key),
        "the body changed after signing": tampered,
        "another customer's topic, validly signed": sns_message("Notification", body, topic="arn:aws:sns:eu-west-1:999999999999:theirs"),
        "a certificate off AWS": sns_message("Notification", body, cert_url="https://evil.example/SimpleNotificationService-1.pem"),
        "a certificate over http": sns_message("Notification", body, cert_url=SNS_CERT_URL.replace("https:", "http:")),
        "a look-alike host": sns_message("Notification", body, cert_url="https://sns.eu-west-1.amazonaws.com.evil.example/x.pem"),
        "a port that is no number": sns_message("Notification", body, cert_url="https://sns.eu-west-1.amazonaws.com:x/a.pem"),
        "signature version 3": {**sns_message("Notification", body), "SignatureVersion": "3"},
    }
    for case, message in refused.items():
        assert hooks.ses(message).status_code == 400, case
    assert hooks.client.post("/hooks/ses", data=b"not json", content_type="text/plain").status_code == 400
    assert hooks.rows() == rows


def test_the_signing_certificate_is_fetched_once_and_a_subscription_is_confirmed_only_when_allowed(
    project_dir: Path, runtime_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from autofunnel.services.hooks.ses import CertificateCache
    from hooks_at_hand import SNS_CERT_PEM, SNS_CERT_URL, make_hooks, sns_message

    fetched: list[str] = []

    def fetch(url: str) -> bytes:  # stands for the network: answers as AWS would, and notes what was asked
        fetched.append(url)
        return SNS_CERT_PEM if url == SNS_CERT_URL else b"<ConfirmSubscriptionResponse/>"

    h = make_hooks(project_dir, runtime_factory, tmp_path, TEST_BROKER_URL, ses_signing_cert_dir="")
    h.rt.sns_certificates = CertificateCache(fetch)
    subscribe(h, "f@example.com")
    for _ in range(2):
        assert h.ses(sns_message("Notification", {"Message": ses_bounce(["f@example.com"], "Transient")})).json["accepted"] == 1
    assert fetched == [SNS_CERT_URL]  # kept after the first message

    subscribe_url = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:eu-west-1:123456789012:ses-bounces&Token=2336412f37"
    confirmation = {"Message": "You have chosen to subscribe to the topic …", "SubscribeURL": subscribe_url, "Token": "2336412f37"}
    with caplog.at_level("WARNING"):
        answer = h.ses(sns_message("SubscriptionConfirmation", confirmation))
    assert answer.status_code == 200 and "not confirmed" in answer.json["ignored"]
    assert subscribe_url in caplog.text and fetched == [SNS_CERT_URL]

    allowed = make_hooks(project_dir, runtime_factory, tmp_path, TEST_BROKER_URL, ses_signing_cert_dir="", ses_confirm_subscriptions="true")
    allowed.rt.sns_certificates = CertificateCache(fetch)
    assert allowed.ses(sns_message("SubscriptionConfirmation", confirmation)).json["ignored"] == "subscription confirmed"
    assert fetched == [SNS_CERT_URL, SNS_CERT_URL, subscribe_url]
    elsewhere = {**confirmation, "SubscribeURL": "https://evil.example/?Action=ConfirmSubscription"}
    assert allowed.ses(sns_message("SubscriptionConfirmation", elsewhere)).status_code == 400
    assert fetched[-1] == subscribe_url

    def offline(url: str) -> bytes:
        raise OSError("no network")

    allowed.rt.sns_certificates = CertificateCache(offline)
    answer = allowed.ses(sns_message("Notification", {"Message": ses_bounce(["f@example.com"])}))
    assert answer.status_code == 503 and answer.json["error"]["field"] == "ses_signing_cert_dir"  # SNS retries
