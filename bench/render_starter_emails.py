"""Usage: python bench/render_starter_emails.py OUTDIR [true|false for AUTOFUNNEL_TRACK_OPENS, default: the product default]; then sh bench/spam_score.sh OUTDIR/outbox.
Render every starter email through the real pipeline into a file outbox (for SpamAssassin)."""
import shutil, sys
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

root = Path(sys.argv[1]); shutil.rmtree(root, ignore_errors=True)
init_project(root)
yoga = root / "funnels/yoga.yml"
yoga.write_text(yoga.read_text().replace("holdout: 10%", "holdout: 0%"))
env = {"AUTOFUNNEL_DATABASE_URL": f"sqlite:///{root}/af.db", "AUTOFUNNEL_SMTP_URL": f"file://{root}/outbox",
       "AUTOFUNNEL_BASE_URL": "https://shop.example", "AUTOFUNNEL_POSTAL_ADDRESS": "Anna Yoga, 1 Main Street, 10115 Berlin, Germany",
       "AUTOFUNNEL_MAIL_FROM": "Anna <anna@yoga.example>", **({"AUTOFUNNEL_TRACK_OPENS": sys.argv[2]} if len(sys.argv) > 2 else {}), "AUTOFUNNEL_SECRET_KEY": "a-long-enough-secret-key-123"}
upgrade(env["AUTOFUNNEL_DATABASE_URL"])
t0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
clock = FixedClock(t0)
rt = Runtime.open(load_settings(root, environ=env), clock)
def ev(*items): record_events(rt, parse_events(list(items), clock.now()))
def at(hours): clock.current = t0 + timedelta(hours=hours); run_tick(rt)
for who in ("ann", "bob"):
    subscribe(rt, parse_subscribe({"email": f"{who}@example.com", "funnel": "yoga", "first_name": who.title(), "timezone": "Europe/Berlin", "owner": "manager@yoga.example"}, t0), consent={"via": "t"})
    ev({"type": "confirmed", "email": f"{who}@example.com"})
subscribe(rt, parse_subscribe({"email": "dora@example.com", "funnel": "yoga", "first_name": "Dora"}, t0), consent={"via": "t"})  # stays pending: the confirmation email
at(0)
for h in (24.1, 48.2, 72.3): at(h)       # ann & bob: tripwire-offer, reminder, expired
ev({"type": "purchase", "email": "bob@example.com", "properties": {"product": "mini-course", "amount": 19, "currency": "EUR"}})
at(72.4); at(72.4 + 48.1); at(72.4 + 48.1 + 72.1)   # thanks-mini, core-offer, call-lead notify
ev({"type": "purchase", "email": "bob@example.com", "properties": {"product": "full-course", "amount": 199, "currency": "EUR"}})
at(200); at(200 + 24 * 7.1)                       # welcome-core, upsell-offer
ev({"type": "cart_updated", "email": "carl@example.com", "properties": {"cart_id": "c1", "items": [{"name": "Yoga mat", "quantity": 1, "price": "29.00"}], "value": 29, "checkout_url": "https://shop.example/checkout/c1"}})
base = 400
for h in (1.1, 24.2, 72.3, 100): at(base + h)
rt.close()
for path in sorted((root / "outbox").glob("*.eml")): print(path)
