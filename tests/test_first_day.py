"""What a seller meets in the first hour (issue 18): mistakes `validate` must catch
before they fail at send time, and a template failure at send time that nobody can miss."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from smtp_sink import SmtpSink

from autofunnel.cli import main
from autofunnel.clock import FixedClock
from autofunnel.mail.templates import FUNNEL_ATTRIBUTES, LEAD_ATTRIBUTES
from autofunnel.services.events import record_events
from autofunnel.services.inputs import parse_events, parse_subscribe
from autofunnel.services.leads import lead_view, subscribe
from autofunnel.services.scheduler import run_tick
from autofunnel.web import create_app

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # a Monday, 10:30 in Berlin


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {path}"
    path.write_text(text.replace(old, new))


def validate(project: Path, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["validate", str(project)], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout.splitlines()


@pytest.fixture
def project_dir(project_dir: Path) -> Path:
    """The starter without holdout, double opt-in and sending hours, so any tick sends the welcome at once."""
    yoga = project_dir / "funnels/yoga.yml"
    text = yoga.read_text().replace("holdout: 10%", "holdout: 0%").replace("double_opt_in: true", "double_opt_in: false")
    text = text.replace('send_window: "09:00-21:00"', "").replace("quiet_days: [sun]", "")
    yoga.write_text(text)
    return project_dir


# validate: attributes of the objects the renderer provides -------------------------------


def test_a_misspelt_lead_attribute_is_an_error_at_its_line(project_dir: Path) -> None:
    welcome = project_dir / "templates/yoga/welcome.html"
    edit(welcome, "{% block body %}\n", "{% block body %}\n<p>{{ lead.frist_name }}</p>\n")
    line = welcome.read_text().splitlines().index("<p>{{ lead.frist_name }}</p>") + 1
    code, lines = validate(project_dir)
    assert code == 1
    assert any(entry.startswith(f"{welcome}:{line}: lead.frist_name: lead has no 'frist_name' (did you mean 'first_name'?)") for entry in lines), lines


def test_a_misspelt_funnel_attribute_in_the_subject_is_an_error(project_dir: Path) -> None:
    welcome = project_dir / "templates/yoga/welcome.html"
    text = welcome.read_text()
    subject_line = next(number for number, entry in enumerate(text.splitlines(), 1) if entry.startswith("subject:"))
    edit(welcome, "subject: \"", "subject: \"{{ funnel.tittle }} ")
    code, lines = validate(project_dir)
    assert code == 1
    assert any(entry.startswith(f"{welcome}:{subject_line}: funnel.tittle: funnel has no 'tittle' (did you mean 'title'?)") for entry in lines), lines


def test_a_subscript_with_a_misspelt_name_is_an_error_too(project_dir: Path) -> None:
    edit(project_dir / "templates/yoga/welcome.html", "{% block body %}\n", "{% block body %}\n{{ lead['fist_name'] }}\n")
    code, lines = validate(project_dir)
    assert code == 1
    assert any("lead.fist_name: lead has no 'fist_name'" in entry for entry in lines), lines


def test_a_name_the_template_assigns_itself_is_not_checked(project_dir: Path) -> None:
    edit(project_dir / "templates/yoga/welcome.html", "{% block body %}\n", "{% block body %}\n{% for lead in [{'x': 1}] %}{{ lead.x }}{% endfor %}\n")
    code, lines = validate(project_dir)
    assert code == 0, lines


def test_an_unknown_event_property_is_a_warning(project_dir: Path) -> None:
    cart = project_dir / "templates/abandoned-cart/cart-1.html"
    edit(cart, "{% block body %}\n", "{% block body %}\n<p>{{ event.cart_idd }}</p>\n")
    line = cart.read_text().splitlines().index("<p>{{ event.cart_idd }}</p>") + 1
    code, lines = validate(project_dir)
    assert code == 0, lines
    assert any(
        entry.startswith(f"{cart}:{line}: warning: event.cart_idd: the events that start abandoned-cart (cart_updated) are not known to carry 'cart_idd' (did you mean 'cart_id'?)")
        for entry in lines
    ), lines


def test_known_event_properties_and_custom_triggers_pass(project_dir: Path) -> None:
    edit(project_dir / "templates/abandoned-cart/cart-1.html", "{% block body %}\n", "{% block body %}\n{{ event.cart_id }}{{ event.get('coupon', '') }}\n")
    edit(project_dir / "funnels/abandoned-cart.yml", "start_on: {event: cart_updated}", "start_on: {event: basket_changed}")
    edit(project_dir / "templates/abandoned-cart/cart-2.html", "{% block body %}\n", "{% block body %}\n{{ event.basket_token }}\n")
    code, lines = validate(project_dir)
    assert code == 0, lines
    assert not any("event." in entry for entry in lines), lines


def test_every_attribute_validate_accepts_is_one_the_renderer_provides(
    runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink
) -> None:
    """The single source of truth: what validate allows renders at send time."""
    uses = " ".join(f"[{{{{ lead.{name} }}}}]" for name in LEAD_ATTRIBUTES) + " ".join(f"[{{{{ funnel['{name}'] }}}}]" for name in FUNNEL_ATTRIBUTES)
    edit(project_dir / "templates/yoga/welcome.html", "{% block body %}\n", "{% block body %}\n<p>" + uses + "</p>\n")
    assert validate(project_dir)[0] == 0
    rt = runtime_factory(project_dir, smtp_sink.url(), FixedClock(T0))
    subscribe(rt, parse_subscribe({"email": "ann@example.com", "funnel": "yoga", "first_name": "Ann"}, T0), consent={"via": "test"})
    assert run_tick(rt).render_failures == []
    assert len(smtp_sink.messages) == 1
    assert "[Ann]" in smtp_sink.messages[0].raw.decode()


# a template that fails at send time is loud ----------------------------------------------


def test_a_template_that_fails_to_render_is_reported_everywhere(
    runtime_factory: Any, database_url: str, project_dir: Path, smtp_sink: SmtpSink
) -> None:
    # Passes validate (a warning: the subscription carries no 'coupon'), fails for every lead.
    edit(project_dir / "templates/yoga/welcome.html", "{% block body %}\n", "{% block body %}\n<p>{{ event['coupon'] }}</p>\n")
    code, lines = validate(project_dir)
    assert code == 0 and any("warning: event.coupon" in entry for entry in lines), lines
    clock = FixedClock(T0)
    rt = runtime_factory(project_dir, smtp_sink.url(), clock)
    subscribe(rt, parse_subscribe({"email": "ann@example.com", "funnel": "yoga"}, T0), consent={"via": "test"})
    env = {
        "AUTOFUNNEL_DATABASE_URL": database_url, "AUTOFUNNEL_SMTP_URL": smtp_sink.url(),
        "AUTOFUNNEL_BASE_URL": "https://shop.example", "AUTOFUNNEL_SECRET_KEY": "test-secret-key-0123456789",
    }
    runner = CliRunner()
    now = datetime.now(UTC)  # `status` and `tick` run on the real clock
    ticked = runner.invoke(main, ["--project-dir", str(project_dir), "tick", "--now", now.isoformat()], env=env)
    assert ticked.exit_code == 1, ticked.output
    assert "1 email(s) failed to render: template yoga/welcome" in ticked.stderr
    assert smtp_sink.messages == []

    timeline = lead_view(rt, "ann@example.com")["timeline"]
    failed = [entry for entry in timeline if entry["decision"] == "failed"]
    assert failed and "template failed to render" in failed[0]["reason"] and "'coupon'" in failed[0]["reason"], timeline

    status = runner.invoke(main, ["--project-dir", str(project_dir), "status", "--json"], env=env)
    assert status.exit_code == 1, status.output
    answer = json.loads(status.stdout)
    assert answer["render_failed"].startswith("1 email(s) failed to render in the last hour: template yoga/welcome")

    clock.current = now
    response = create_app(runtime=rt).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["work"].startswith("1 email(s) failed to render in the last hour: template yoga/welcome")


def test_a_clean_tick_exits_zero(database_url: str, runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink) -> None:
    rt = runtime_factory(project_dir, smtp_sink.url(), FixedClock(T0))
    record_events(rt, parse_events([{"type": "confirmed", "email": "bob@example.com"}], T0))
    env = {"AUTOFUNNEL_DATABASE_URL": database_url, "AUTOFUNNEL_SMTP_URL": smtp_sink.url(), "AUTOFUNNEL_SECRET_KEY": "test-secret-key-0123456789"}
    ticked = CliRunner().invoke(main, ["--project-dir", str(project_dir), "tick"], env=env)
    assert ticked.exit_code == 0, ticked.output
