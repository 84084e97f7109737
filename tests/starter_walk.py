"""Every email the starter project can send, through the real pipeline into a file outbox.

Two leads walk the yoga funnel (one buys the mini-course, then the full course), one
stays pending (the confirmation and its reminder), one abandons a cart. Used by
tests/test_spam_score.py and by bench/render_starter_emails.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from autofunnel.clock import FixedClock
from autofunnel.config import load_settings
from autofunnel.services.events import record_events
from autofunnel.services.inputs import parse_events, parse_subscribe
from autofunnel.services.leads import subscribe
from autofunnel.services.runtime import Runtime
from autofunnel.services.scheduler import run_tick
from autofunnel.services.starter import init_project
from autofunnel.store.migrate import upgrade

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # a Monday morning in Berlin
SETTINGS = {
    "AUTOFUNNEL_BASE_URL": "https://shop.example",
    "AUTOFUNNEL_POSTAL_ADDRESS": "Anna Yoga, 1 Main Street, 10115 Berlin, Germany",
    "AUTOFUNNEL_MAIL_FROM": "Anna <anna@yoga.example>",
    "AUTOFUNNEL_SECRET_KEY": "a-long-enough-secret-key-123",
}


def write_starter_emails(root: Path, database_url: str, **settings: str) -> list[Path]:
    """Make the starter project in `root` and send its every email into `root/outbox`; the .eml files."""
    init_project(root)
    yoga = root / "funnels/yoga.yml"
    yoga.write_text(yoga.read_text().replace("holdout: 10%", "holdout: 0%"))
    environ: Mapping[str, str] = {
        **SETTINGS, "AUTOFUNNEL_DATABASE_URL": database_url, "AUTOFUNNEL_SMTP_URL": f"file://{root}/outbox",
        **{f"AUTOFUNNEL_{key.upper()}": value for key, value in settings.items()},
    }
    upgrade(database_url)
    clock = FixedClock(T0)
    rt = Runtime.open(load_settings(root, environ=environ), clock)
    try:
        def events(*items: dict[str, object]) -> None:
            record_events(rt, parse_events(list(items), clock.now()))

        def tick_at(hours: float) -> None:
            clock.current = T0 + timedelta(hours=hours)
            run_tick(rt)

        for who in ("ann", "bob"):
            lead = {"email": f"{who}@example.com", "funnel": "yoga", "first_name": who.title(), "timezone": "Europe/Berlin", "owner": "manager@yoga.example"}
            subscribe(rt, parse_subscribe(lead, T0), consent={"via": "test"})
            events({"type": "confirmed", "email": f"{who}@example.com"})
        subscribe(rt, parse_subscribe({"email": "dora@example.com", "funnel": "yoga", "first_name": "Dora"}, T0), consent={"via": "test"})
        tick_at(0)
        for hours in (24.1, 48.2, 72.3):  # the tripwire offer, its reminder, the expired note; Dora's reminder
            tick_at(hours)
        events({"type": "purchase", "email": "bob@example.com", "properties": {"product": "mini-course", "amount": 19, "currency": "EUR"}})
        for hours in (72.4, 72.4 + 48.1, 72.4 + 48.1 + 72.1):  # thanks, the core offer, the owner's call note
            tick_at(hours)
        events({"type": "purchase", "email": "bob@example.com", "properties": {"product": "full-course", "amount": 199, "currency": "EUR"}})
        for hours in (200, 200 + 24 * 7.1):  # welcome to the course, the upsell
            tick_at(hours)
        cart = {"cart_id": "c1", "items": [{"name": "Yoga mat", "quantity": 1, "price": "29.00"}], "value": 29, "checkout_url": "https://shop.example/checkout/c1"}
        events({"type": "cart_updated", "email": "carl@example.com", "properties": cart})
        for hours in (1.1, 24.2, 72.3, 100):
            tick_at(400 + hours)
    finally:
        rt.close()
    return sorted((root / "outbox").glob("*.eml"))
