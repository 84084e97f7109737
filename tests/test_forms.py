"""Subscribe forms and double opt-in by email, end to end: the Flask test client over a real
database, the confirmation email through the real SMTP sink, a fixed clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from smtp_sink import SmtpSink
from sqlalchemy import func, select

from autofunnel.cli import main
from autofunnel.clock import FixedClock
from autofunnel.services.leads import lead_view
from autofunnel.services.optin import send_confirmation
from autofunnel.services.scheduler import run_tick
from autofunnel.store.models import Delivery, Lead
from autofunnel.web import create_app
from autofunnel.web.limits import limiter

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
FORM = {"email": "Anna@Example.com", "first_name": "Anna", "consent": "yes", "website": ""}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def project_dir(project_dir: Path) -> Path:
    yoga = project_dir / "funnels/yoga.yml"
    yoga.write_text(yoga.read_text().replace("holdout: 10%", "holdout: 0%").replace(
        "double_opt_in: true", 'double_opt_in: true\nconsent_text: "Yes, yoga emails please."'
    ))
    return project_dir


@pytest.fixture
def rt(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> Any:
    return runtime_factory(project_dir, smtp_sink.url(), clock, form_rate_limit="5 per minute")


@pytest.fixture
def client(rt: Any) -> FlaskClient:
    app = create_app(runtime=rt)
    limiter.reset()
    return app.test_client()


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.strict).parsebytes(raw)
    assert not message.defects
    return message  # type: ignore[return-value]


def confirm_link(message: EmailMessage) -> str:
    html = message.get_body(("html",)).get_content()
    links = re.findall(r'href="([^"]+)"', html)
    assert len(links) == 1, links  # one button, nothing else to click
    assert "/t/o/" not in html and "/t/c/" not in html  # no pixel, no click tracking
    return unescape(links[0]).removeprefix("http://testserver")


def lead_of(rt: Any, email: str = "anna@example.com") -> dict[str, Any]:
    return lead_view(rt, email)


# The form ------------------------------------------------------------------------------------


def test_the_form_page_shows_title_consent_and_carries_the_source(client: FlaskClient) -> None:
    page = client.get("/f/yoga?utm_source=insta&utm_campaign=spring&evil=1", headers={"Referer": "https://blog.example/post"})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Yoga for beginners" in html and "Yes, yoga emails please." in html
    assert 'name="website"' in html and 'type="checkbox" name="consent"' in html
    assert 'name="utm_source" value="insta"' in html and 'name="utm_campaign" value="spring"' in html
    assert 'name="referrer" value="https://blog.example/post"' in html and "evil" not in html
    assert "<script" not in html


def test_unknown_funnels_and_sequences_have_no_form(client: FlaskClient) -> None:
    assert client.get("/f/nope").status_code == 404
    assert client.get("/f/abandoned-cart").status_code == 404
    assert client.post("/f/abandoned-cart", data=FORM).status_code == 404


def test_a_submission_stores_the_lead_pending_with_its_consent_and_source(client: FlaskClient, rt: Any) -> None:
    answer = client.post("/f/yoga", data={**FORM, "utm_source": "insta", "referrer": "https://blog.example/"}, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert answer.status_code == 200
    assert "Check your inbox" in answer.get_data(as_text=True)
    lead = lead_of(rt)
    assert lead["status"] == "pending" and lead["first_name"] == "Anna"
    assert lead["source"] == {"utm_source": "insta", "referrer": "https://blog.example/"}
    assert lead["consent"] == {"at": "2026-03-02T09:30:00Z", "via": "form", "form": "/f/yoga", "ip": "203.0.113.9", "text": "Yes, yoga emails please."}


def test_a_filled_honeypot_looks_like_success_and_writes_nothing(client: FlaskClient, rt: Any) -> None:
    answer = client.post("/f/yoga", data={**FORM, "website": "http://spam.example"})
    assert answer.status_code == 200 and "Check your inbox" in answer.get_data(as_text=True)
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 0


def test_bad_input_shows_the_form_again_and_writes_nothing(client: FlaskClient, rt: Any) -> None:
    no_consent = client.post("/f/yoga", data={**FORM, "consent": ""})
    assert no_consent.status_code == 400 and "tick the box" in no_consent.get_data(as_text=True)
    bad_email = client.post("/f/yoga", data={**FORM, "email": "not an address"})
    assert bad_email.status_code == 400 and 'name="email"' in bad_email.get_data(as_text=True)
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 0


def test_submissions_are_rate_limited_per_ip(client: FlaskClient) -> None:
    codes = [client.post("/f/yoga", data={**FORM, "email": f"p{i}@example.com"}, environ_base={"REMOTE_ADDR": "198.51.100.1"}).status_code for i in range(6)]
    assert codes == [200] * 5 + [429]
    other = client.post("/f/yoga", data=FORM, environ_base={"REMOTE_ADDR": "198.51.100.2"})
    assert other.status_code == 200


def test_form_redirect_and_thanks_come_from_the_funnel_never_the_request(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    yoga = project_dir / "funnels/yoga.yml"
    yoga.write_text(yoga.read_text().replace("title: Yoga for beginners", "title: Yoga for beginners\nform_redirect: https://yoga.example/thanks"))
    client = create_app(runtime=runtime_factory(project_dir, smtp_sink.url(), clock)).test_client()
    limiter.reset()
    answer = client.post("/f/yoga?next=https://evil.example/", data={**FORM, "next": "https://evil.example/", "redirect": "https://evil.example/"})
    assert answer.status_code == 303 and answer.headers["Location"] == "https://yoga.example/thanks"


def test_form_thanks_text(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    yoga = project_dir / "funnels/yoga.yml"
    yoga.write_text(yoga.read_text().replace("title: Yoga for beginners", 'title: Yoga for beginners\nform_thanks: "Namaste! Look for our email."'))
    client = create_app(runtime=runtime_factory(project_dir, smtp_sink.url(), clock)).test_client()
    limiter.reset()
    assert "Namaste! Look for our email." in client.post("/f/yoga", data=FORM).get_data(as_text=True)


def test_a_seller_template_overrides_the_form_page(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    (project_dir / "templates/yoga/form.html").write_text(
        '<html><body class="mine"><h1>{{ funnel.title }}</h1><form method="post" action="{{ action }}">'
        '<input name="email" value="{{ values.email }}"><label>{{ consent_text }}</label>{% if error %}<p>{{ error }}</p>{% endif %}'
        '{% for name, value in hidden_fields %}<input type="hidden" name="{{ name }}" value="{{ value }}">{% endfor %}</form></body></html>'
    )
    result = CliRunner().invoke(main, ["--project-dir", str(project_dir), "validate"])
    assert result.exit_code == 0, result.output
    client = create_app(runtime=runtime_factory(project_dir, smtp_sink.url(), clock)).test_client()
    html = client.get("/f/yoga?utm_source=x").get_data(as_text=True)
    assert 'class="mine"' in html and 'action="/f/yoga"' in html and 'name="utm_source" value="x"' in html


def test_the_embed_snippet_posts_to_the_base_url(project_dir: Path) -> None:
    result = CliRunner().invoke(main, ["--project-dir", str(project_dir), "form", "yoga"], env={"AUTOFUNNEL_BASE_URL": "https://mail.yoga.example"})
    assert result.exit_code == 0, result.output
    assert '<form method="post" action="https://mail.yoga.example/f/yoga"' in result.output
    assert 'name="website"' in result.output and "Yes, yoga emails please." in result.output
    missing = CliRunner().invoke(main, ["--project-dir", str(project_dir), "form", "abandoned-cart"])
    assert missing.exit_code != 0 and "no funnel 'abandoned-cart'" in missing.output


# Double opt-in ---------------------------------------------------------------------------------


def test_confirmation_email_then_get_changes_nothing_post_confirms_and_the_welcome_goes(client: FlaskClient, rt: Any, smtp_sink: SmtpSink) -> None:
    client.post("/f/yoga", data=FORM)
    assert "1 sent" in run_tick(rt).summary
    assert len(smtp_sink.messages) == 1
    message = parse(smtp_sink.messages[0].raw)
    assert message["Subject"] == "Please confirm your subscription to Yoga for beginners"
    assert message["To"] == "Anna <anna@example.com>" and "List-Unsubscribe" not in message
    body = message.get_body(("html",)).get_content()
    assert "Yes, yoga emails please." in body
    link = confirm_link(message)
    assert link.startswith("/confirm/")

    page = client.get(link)
    assert page.status_code == 200 and "Confirm" in page.get_data(as_text=True)
    assert lead_of(rt)["status"] == "pending"  # a mail scanner's GET confirms nothing
    run_tick(rt)
    assert len(smtp_sink.messages) == 1  # and a pending lead gets no funnel email

    done = client.post(link)
    assert done.status_code == 200 and "confirmed" in done.get_data(as_text=True)
    assert lead_of(rt)["status"] == "active"
    assert "1 sent" in run_tick(rt).summary
    assert parse(smtp_sink.messages[1].raw)["Subject"].startswith("Anna")  # the welcome email

    again = client.post(link)  # twice: harmless
    assert again.status_code == 200
    view = lead_of(rt)
    assert [e["type"] for e in view["events"]].count("confirmed") == 1
    run_tick(rt)
    assert len(smtp_sink.messages) == 2


def test_a_seller_confirm_template_is_used(client: FlaskClient, rt: Any, smtp_sink: SmtpSink, project_dir: Path) -> None:
    (project_dir / "templates/yoga/confirm.html").write_text(
        '---\nsubject: "Confirm, {{ lead.first_name }}"\n---\n<p>{{ consent_text }}</p><a href="{{ confirm_url }}">Yes</a>\n'
    )
    result = CliRunner().invoke(main, ["--project-dir", str(project_dir), "validate"])
    assert result.exit_code == 0, result.output
    client.post("/f/yoga", data=FORM)
    run_tick(rt)
    message = parse(smtp_sink.messages[0].raw)
    assert message["Subject"] == "Confirm, Anna"
    assert confirm_link(message).startswith("/confirm/")


def test_an_expired_link_says_so_and_sends_a_new_one(client: FlaskClient, rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    client.post("/f/yoga", data=FORM)
    run_tick(rt)
    link = confirm_link(parse(smtp_sink.messages[0].raw))
    clock.current = T0 + timedelta(days=7, minutes=1)
    page = client.get(link)
    assert page.status_code == 410 and "expired" in page.get_data(as_text=True)
    assert client.post(link).status_code == 410
    assert lead_of(rt)["status"] == "pending"
    resent = client.post(link + "/again")
    assert resent.status_code == 200
    client.post(link + "/again")  # asking again at once queues nothing more
    run_tick(rt)
    fresh = [m for m in smtp_sink.messages[1:] if "confirm" in m.message["Subject"].lower()]
    assert len(fresh) == 2  # the 24 h reminder (due long ago) and the one asked for
    assert client.post(confirm_link(parse(fresh[-1].raw))).status_code == 200
    assert lead_of(rt)["status"] == "active"


def test_tampered_links_are_404(client: FlaskClient) -> None:
    assert client.get("/confirm/abc.def").status_code == 404
    assert client.post("/confirm/abc.def").status_code == 404


def test_one_reminder_after_24h_and_erasure_after_30_days(client: FlaskClient, rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    client.post("/f/yoga", data=FORM)
    run_tick(rt)
    clock.current = T0 + timedelta(hours=23)
    run_tick(rt)
    assert len(smtp_sink.messages) == 1
    clock.current = T0 + timedelta(hours=24, minutes=1)
    assert "1 confirmation reminder(s) queued" in run_tick(rt).summary
    assert len(smtp_sink.messages) == 2
    assert parse(smtp_sink.messages[1].raw)["Subject"].startswith("Reminder: ")
    clock.current = T0 + timedelta(days=3)
    run_tick(rt)
    assert len(smtp_sink.messages) == 2  # one reminder only
    clock.current = T0 + timedelta(days=30, minutes=1)
    assert "1 never-confirmed lead(s) erased" in run_tick(rt).summary
    with rt.db.read() as session:
        lead = session.scalars(select(Lead)).one()
        assert lead.status == "erased" and lead.consent is None and lead.email.endswith("@erased.invalid")
    assert len(smtp_sink.messages) == 2


def test_reminder_and_erasure_can_be_off(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    rt = runtime_factory(project_dir, smtp_sink.url(), clock, confirm_reminder_hours="0", pending_erase_days="0")
    client = create_app(runtime=rt).test_client()
    limiter.reset()
    client.post("/f/yoga", data=FORM)
    run_tick(rt)
    clock.current = T0 + timedelta(days=40)
    run_tick(rt)
    assert len(smtp_sink.messages) == 1
    assert lead_of(rt)["status"] == "pending"


def test_a_pending_lead_gets_only_the_confirmation(client: FlaskClient, rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    client.post("/f/yoga", data=FORM)
    for hours in (0, 1, 25, 49, 24 * 5):
        clock.current = T0 + timedelta(hours=hours)
        run_tick(rt)
    subjects = [m.message["Subject"] for m in smtp_sink.messages]
    assert subjects == ["Please confirm your subscription to Yoga for beginners", "Reminder: Please confirm your subscription to Yoga for beginners"]
    with rt.db.read() as session:
        kinds = set(session.scalars(select(Delivery.kind).where(Delivery.status == "sent")))
    assert kinds == {"confirm"}


def test_a_confirmation_queued_for_a_lead_who_confirmed_meanwhile_is_not_sent(client: FlaskClient, rt: Any, smtp_sink: SmtpSink) -> None:
    client.post("/f/yoga", data=FORM)
    run_tick(rt)
    link = confirm_link(parse(smtp_sink.messages[0].raw))
    assert send_confirmation(rt, "anna@example.com") is None  # one was queued less than 5 minutes ago
    rt.clock.current = T0 + timedelta(minutes=6)
    assert send_confirmation(rt, "anna@example.com") is not None  # the admin's "send it again"
    client.post(link)
    run_tick(rt)
    view = lead_of(rt)
    again = [d for d in view["deliveries"] if d["step"] == "confirm-again"]
    assert again[0]["status"] == "skipped" and again[0]["reason"] == "not needed: lead already confirmed"
    assert [m.message["Subject"] for m in smtp_sink.messages][-1].startswith("Anna")  # the welcome, not the confirmation


def test_the_limiter_counts_in_redis_when_the_broker_is_redis() -> None:
    from flask import Flask

    from autofunnel.config import Settings
    from autofunnel.web.limits import init_limiter

    app = Flask("t")
    init_limiter(app, Settings(broker_url="redis://127.0.0.1:6379/3"))
    assert app.config["RATELIMIT_STORAGE_URI"] == "redis://127.0.0.1:6379/3"
    other = Flask("u")
    init_limiter(other, Settings(broker_url="filesystem:///tmp/broker"))
    assert other.config["RATELIMIT_STORAGE_URI"] == "memory://"
