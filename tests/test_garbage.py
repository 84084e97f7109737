"""Hundreds of junk requests at every public route and every webhook: each answered 4xx,
none 5xx, and not one row written in any table.

To cover a new public route, add its path pattern to PUBLIC_ROUTES (or a webhook to
WEBHOOKS); routes of the forms milestone (`/f/`, `/confirm/`) are picked up when the app
has them.
"""

from __future__ import annotations

import json
import os
import random
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from autofunnel.tokens import PURPOSES, Tokens
from hooks_at_hand import STRIPE_SECRET, Hooks, checkout_session, make_hooks, stripe_header

pytestmark = pytest.mark.db

TEST_BROKER_URL = os.environ.get("AUTOFUNNEL_TEST_BROKER_URL", "")
PUBLIC_ROUTES = {"/t/o/{}": "open", "/t/c/{}": "click", "/o/{}": "offer", "/countdown/{}.gif": "countdown", "/u/{}": "unsubscribe"}
OPTIONAL_ROUTES = {"/f/{}": None, "/confirm/{}": "confirm"}
WEBHOOKS = ("stripe", "shopify", "postmark", "mailgun", "sendgrid", "ses", "../stripe")


@pytest.fixture
def hooks(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> Hooks:
    return make_hooks(project_dir, runtime_factory, tmp_path, TEST_BROKER_URL)


def junk_tokens(h: Hooks, rng: random.Random, purpose: str | None) -> list[str]:
    """Tokens that must open nothing here: random, huge, traversal, NUL, other purposes' and other keys' tokens."""
    other_key = Tokens(["another-secret-key-0123456789"])
    tokens = [
        "", "x", "../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%00", "a%00b", "\u202e\u0000", "😀" * 50, "A" * 10_000,
        quote(bytes(rng.randrange(256) for _ in range(64)), safe=""), secrets.token_urlsafe(40), "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.e30.",
        other_key.sign(purpose or "open", [1]), other_key.sign(purpose or "click", [1, "https://evil.example/"]),
    ]
    for other in PURPOSES:
        if other != purpose:
            tokens.append(h.rt.tokens.sign(other, [1, "https://evil.example/", 1]))
            tokens.append(h.rt.tokens.sign(other, [1]))
    if purpose is not None:
        good = h.rt.tokens.sign(purpose, [1])
        tokens += [good[:-1] + ("A" if good[-1] != "A" else "B"), good + "x", good[: len(good) // 2], good.upper()]
        tokens += [h.rt.tokens.sign(purpose, payload) for payload in (["not-a-number"], {"a": 1}, [None, None], [1, "javascript:alert(1)"], [])]
    tokens += [secrets.token_hex(rng.randrange(1, 200)) for _ in range(8)]
    return tokens


def junk_bodies(rng: random.Random) -> list[bytes]:
    return [
        b"", b"\x00" * 100, bytes(rng.randrange(256) for _ in range(2048)), b"{", b"[]", b"null", b"1e999999", b'{"a": NaN}',
        json.dumps({"type": "checkout.session.completed", "data": {"object": {}}}).encode(), b"x" * 300_000,
        ("[" * 5000 + "]" * 5000).encode(), "é\u0000😀".encode(),
    ]


def test_garbage_at_every_public_route_and_webhook_is_4xx_and_writes_nothing(hooks: Hooks) -> None:
    rng = random.Random(15)
    rows = hooks.rows()
    served = {rule.rule for rule in hooks.app.url_map.iter_rules()}
    routes = dict(PUBLIC_ROUTES)
    routes.update({pattern: purpose for pattern, purpose in OPTIONAL_ROUTES.items() if any(r.startswith(pattern[:3]) for r in served)})
    answers: list[tuple[int, str, str]] = []

    def send(method: str, path: str, **kwargs: Any) -> None:
        response = hooks.client.open(path, method=method, **kwargs)
        answers.append((response.status_code, method, path[:80]))

    for pattern, purpose in routes.items():
        for token in junk_tokens(hooks, rng, purpose):
            path = pattern.format(token)
            send("GET", path, headers={"User-Agent": "Mozilla/5.0"})
            send("HEAD", path)
            send("POST", path, data={"List-Unsubscribe": "One-Click"})
    for name in WEBHOOKS:
        session = json.dumps(checkout_session("cs_junk", "junk@example.com")).encode()
        signatures = ["", "t=1,v1=00", "\x00", "t=99999999999999999999,v1=" + "a" * 64, stripe_header(session.decode(), "whsec_wrong", hooks.now()),
                      stripe_header(session.decode(), STRIPE_SECRET, hooks.now() - 3600), secrets.token_hex(32)]
        for body in [*junk_bodies(rng), session]:
            for signature in signatures:
                send("POST", f"/hooks/{name}", data=body, content_type="application/json", headers={
                    "Stripe-Signature": signature, "X-Shopify-Hmac-Sha256": signature, "X-Shopify-Topic": "orders/create",
                    "X-Shopify-Webhook-Id": signature, "Authorization": "Basic " + signature,
                })
        send("GET", f"/hooks/{name}")
    for key in ("a%00b", "%C2%B2", "9" * 30, "../../etc/passwd", "x" * 5000):
        send("GET", f"/api/v1/leads/{key}", headers=hooks.api_headers)
        send("DELETE", f"/api/v1/leads/{key}", headers=hooks.api_headers)
    for nul in ({"type": "x\u0000", "email": "n@example.com"}, {"type": "x", "email": "n@example.com", "properties": {"a\u0000": 1}}):
        send("POST", "/api/v1/events", data=json.dumps(nul), content_type="application/json", headers=hooks.api_headers)
    send("POST", "/api/v1/spend", json={"channel": "ads\u0000", "amount": 1, "date": "2026-01-01"}, headers=hooks.api_headers)
    send("POST", "/api/v1/spend", json={"channel": "ads", "amount": 10**15, "date": "2026-01-01"}, headers=hooks.api_headers)
    for body in junk_bodies(rng):
        send("POST", "/api/v1/events", data=body, content_type="application/json", headers=hooks.api_headers)
        send("POST", "/api/v1/subscribe", data=body, content_type="application/json", headers=hooks.api_headers)
    bad = [answer for answer in answers if not 400 <= answer[0] < 500]
    print(f"garbage: {len(answers)} requests, {sum(a[0] >= 500 for a in answers)} answered 5xx, statuses {sorted({a[0] for a in answers})}")
    assert bad == []
    assert len(answers) >= 500
    assert hooks.rows() == rows
