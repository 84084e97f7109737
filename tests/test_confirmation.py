"""Double opt-in by email, through the web app and the real scheduler and SMTP sink.

A pending lead gets a confirmation email and nothing else; GET on its link
changes nothing; POST confirms once and lets the funnel start; links expire,
a reminder goes once, and leads that never confirm are erased.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from autofunnel.clock import FixedClock
from autofunnel.errors import InvalidInputError
from autofunnel.services.confirmation import send_confirmation
from autofunnel.services.credentials import create_api_key
from autofunnel.services.leads import lead_view
from autofunnel.services.project import validate_project
from autofunnel.services.runtime import Runtime
from autofunnel.services.scheduler import run_tick
from autofunnel.store.models import Event, Lead
from autofunnel.web import create_app
from smtp_sink import SmtpSink

pytestmark = pytest.mark.db

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


class Shop:
    def __init__(self, rt: Runtime, clock: FixedClock, sink: SmtpSink) -> None:
        self.rt, self.clock, self.sink = rt, clock, sink
        _, key = create_api_key(rt.db, clock, "shop")
        self.client: FlaskClient = create_app(runtime=rt).test_client()
        self.headers = {"Authorization": f"Bearer {key}"}

    def subscribe(self, email: str, **extra: Any) -> int:
        answer = self.client.post("/api/v1/subscribe", json={"email": email, "funnel": "yoga", **extra}, headers=self.headers)
        assert answer.status_code == 201, answer.get_data(as_text=True)
        return int(answer.json["lead_id"])

    def messages(self, to: str) -> list[Any]:
        return [message_from_bytes(m.raw, policy=policy.default) for m in self.sink.messages if to in m.recipients]

    def link(self, to: str, index: int = -1) -> str:
        html = self.messages(to)[index].get_body(("html",)).get_content()
        found = re.search(r'href="http://testserver(/confirm/[^"]+)"', html)
        assert found is not None, html
        return found.group(1)

    def later(self, delta: timedelta) -> None:
        self.clock.current = self.clock.current + delta


@pytest.fixture
def shop(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink) -> Shop:
    clock = FixedClock(T0)
    rt = runtime_factory(project_dir, smtp_sink.url(), clock)
    rt.rng = random.Random(0)  # no lead lands in the yoga holdout
    return Shop(rt, clock, smtp_sink)


def test_a_pending_lead_gets_the_confirmation_only_and_confirming_starts_the_funnel(shop: Shop) -> None:
    shop.subscribe("ann@example.com", first_name="Ann")
    run_tick(shop.rt)
    (email,) = shop.messages("ann@example.com")
    assert email["Subject"] == "Please confirm your subscription to Yoga for beginners"
    html = email.get_body(("html",)).get_content()
    assert "/t/o/" not in html and "/t/c/" not in html and "Hi Ann" in html
    link = shop.link("ann@example.com")

    page = shop.client.get(link)  # what a mail scanner does
    assert page.status_code == 200 and "Confirm" in page.get_data(as_text=True)
    assert lead_view(shop.rt, "ann@example.com")["status"] == "pending"
    shop.later(timedelta(hours=3))
    run_tick(shop.rt)
    assert len(shop.messages("ann@example.com")) == 1, "nothing but the confirmation before confirming"

    answer = shop.client.post(link)
    assert answer.status_code == 200 and "You are subscribed" in answer.get_data(as_text=True)
    assert shop.client.post(link).status_code == 200, "confirming twice is harmless"
    view = lead_view(shop.rt, "ann@example.com")
    assert view["status"] == "active"
    assert [e["type"] for e in view["events"]].count("confirmed") == 1
    run_tick(shop.rt)
    subjects = [m["Subject"] for m in shop.messages("ann@example.com")]
    assert len(subjects) == 2 and subjects[1].startswith("Ann")


def test_a_sellers_confirm_template_replaces_the_built_in_one(shop: Shop) -> None:
    template = shop.rt.project.root / "templates" / "yoga" / "confirm.html"
    template.write_text('---\nsubject: "{{ lead.first_name }}, one click left"\n---\n<p>Hello from {{ funnel.title }}</p>\n<a href="{{ confirm_url }}">Yes please</a>\n')
    assert validate_project(shop.rt.project.root).ok
    shop.subscribe("bea@example.com", first_name="Bea")
    run_tick(shop.rt)
    (email,) = shop.messages("bea@example.com")
    assert email["Subject"] == "Bea, one click left"
    assert shop.client.post(shop.link("bea@example.com")).status_code == 200
    assert lead_view(shop.rt, "bea@example.com")["status"] == "active"


def test_confirm_url_is_unknown_to_every_other_email(shop: Shop) -> None:
    welcome = shop.rt.project.root / "templates" / "yoga" / "welcome.html"
    welcome.write_text(welcome.read_text().replace("{% endblock %}", '<a href="{{ confirm_url }}">x</a>{% endblock %}', 1))
    problems = [str(p) for p in validate_project(shop.rt.project.root).errors]
    assert any("welcome.html" in p and "confirm_url" in p for p in problems)


def test_an_expired_link_says_so_and_sends_a_new_one(shop: Shop) -> None:
    shop.subscribe("cat@example.com")
    run_tick(shop.rt)
    old = shop.link("cat@example.com")
    shop.later(timedelta(days=7, hours=1))
    page = shop.client.get(old).get_data(as_text=True)
    assert "expired" in page and "Send me a new link" in page
    assert "expired" in shop.client.post(old).get_data(as_text=True)
    assert lead_view(shop.rt, "cat@example.com")["status"] == "pending"
    assert "on its way" in shop.client.post(f"{old}/resend").get_data(as_text=True)
    run_tick(shop.rt)
    fresh = shop.link("cat@example.com")
    assert fresh != old
    assert "You are subscribed" in shop.client.post(fresh).get_data(as_text=True)


def test_one_reminder_after_a_day_then_erased_after_thirty_days(shop: Shop) -> None:
    shop.subscribe("dan@example.com")
    run_tick(shop.rt)
    shop.later(timedelta(hours=23))
    run_tick(shop.rt)
    assert len(shop.messages("dan@example.com")) == 1
    shop.later(timedelta(hours=2))
    run_tick(shop.rt)
    assert len(shop.messages("dan@example.com")) == 2, "one reminder after 24 h"
    shop.later(timedelta(days=3))
    run_tick(shop.rt)
    assert len(shop.messages("dan@example.com")) == 2, "only one reminder"
    shop.later(timedelta(days=27))
    run_tick(shop.rt)
    view = lead_view(shop.rt, str(first_lead_id(shop)))
    assert view["status"] == "erased" and view["email"].endswith("@erased.invalid")
    assert any("never confirmed" in (t["reason"] or "") for t in view["timeline"])


def first_lead_id(shop: Shop) -> int:
    with shop.rt.db.read() as session:
        return int(session.scalar(select(func.min(Lead.id))) or 0)


def test_the_admins_resend_waits_a_few_minutes_and_only_for_pending_leads(shop: Shop) -> None:
    lead = shop.subscribe("eve@example.com")
    with pytest.raises(InvalidInputError, match="few minutes"):
        send_confirmation(shop.rt, str(lead))
    shop.later(timedelta(minutes=6))
    send_confirmation(shop.rt, str(lead))
    run_tick(shop.rt)
    assert len(shop.messages("eve@example.com")) == 2
    shop.client.post(shop.link("eve@example.com"))
    with pytest.raises(InvalidInputError, match="not waiting"):
        send_confirmation(shop.rt, str(lead))


def test_a_lead_confirmed_before_its_email_went_gets_no_confirmation(shop: Shop) -> None:
    shop.subscribe("fay@example.com")
    answer = shop.client.post("/api/v1/events", json={"type": "confirmed", "email": "fay@example.com"}, headers=shop.headers)
    assert answer.status_code == 202
    run_tick(shop.rt)
    assert [m["Subject"] for m in shop.messages("fay@example.com")] == ["Friend, your yoga guide is inside"]
    confirmation = [d for d in lead_view(shop.rt, "fay@example.com")["deliveries"] if d["kind"] == "confirm"]
    assert [(d["status"], d["reason"]) for d in confirmation] == [("skipped", "not needed: lead already confirmed")]


@pytest.mark.parametrize("token", ["nonsense", "a" * 300, "..%2F..%2Fetc", ""])
def test_bad_confirmation_links_are_404_and_write_nothing(shop: Shop, token: str) -> None:
    with shop.rt.db.read() as session:
        before = session.scalar(select(func.count()).select_from(Event))
    for method in (shop.client.get, shop.client.post):
        assert method(f"/confirm/{token}").status_code == 404
    with shop.rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == before


def test_an_unsubscribe_token_is_no_confirmation(shop: Shop) -> None:
    lead = shop.subscribe("gil@example.com")
    forged = shop.rt.tokens.sign("unsubscribe", [lead, "yoga", int(T0.timestamp())])
    assert shop.client.post(f"/confirm/{forged}").status_code == 404
    assert lead_view(shop.rt, "gil@example.com")["status"] == "pending"
