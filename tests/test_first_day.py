"""What a seller meets in the first hour (issue 18): mistakes `validate` must catch
before they fail at send time, and a template failure at send time that nobody can miss."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from docker_context import docker_ignored, dockerignore_patterns
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


# validate: settings that send mail badly ---------------------------------------------------

CLEAN = {
    "AUTOFUNNEL_BASE_URL": "https://shop.example", "AUTOFUNNEL_MAIL_FROM": "Shop <hello@shop.example>",
    "AUTOFUNNEL_POSTAL_ADDRESS": "1 Main St, Springfield",
}


def warnings_of(project: Path, **env: str | None) -> list[str]:
    code, lines = validate(project, {**CLEAN, **env})  # type: ignore[dict-item]
    assert code == 0, lines
    return [line for line in lines if ": warning: " in line]


def test_a_production_setup_has_no_setup_warnings(project_dir: Path) -> None:
    assert warnings_of(project_dir) == []


def test_no_sender_anywhere_is_a_warning_naming_the_address(project_dir: Path) -> None:
    found = warnings_of(project_dir, AUTOFUNNEL_MAIL_FROM=None, AUTOFUNNEL_BASE_URL=None)
    assert f"{project_dir}/funnels/abandoned-cart.yml:1: warning: abandoned-cart has no from: and AUTOFUNNEL_MAIL_FROM is not set: its emails go out as noreply@localhost.localdomain" in found
    assert not any("yoga has no from:" in line for line in found)  # yoga has its own from:


def test_a_base_url_at_localhost_or_plain_http_is_a_warning(project_dir: Path) -> None:
    assert any("base_url is http://localhost:8000: every link in emails" in line for line in warnings_of(project_dir, AUTOFUNNEL_BASE_URL=None))
    assert any("base_url http://shop.example is not https" in line for line in warnings_of(project_dir, AUTOFUNNEL_BASE_URL="http://shop.example"))


def test_dkim_half_configured_or_not_aligned_is_a_warning(project_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "dkim.pem"
    key.write_text("not read by validate")
    half = warnings_of(project_dir, AUTOFUNNEL_DKIM_DOMAIN="shop.example", AUTOFUNNEL_DKIM_KEY_FILE=str(key))
    assert any("DKIM is half configured (AUTOFUNNEL_DKIM_DOMAIN, AUTOFUNNEL_DKIM_KEY_FILE set, AUTOFUNNEL_DKIM_SELECTOR missing): no email is signed" in line for line in half), half
    full = warnings_of(project_dir, AUTOFUNNEL_DKIM_DOMAIN="shop.example", AUTOFUNNEL_DKIM_SELECTOR="s1", AUTOFUNNEL_DKIM_KEY_FILE=str(key))
    assert [line for line in full if "DMARC" in line] == [
        f"{project_dir}/funnels/yoga.yml:1: warning: yoga sends from yoga.example but DKIM signs for shop.example: DMARC alignment fails; sign for the From domain or send from it"
    ]  # abandoned-cart sends from AUTOFUNNEL_MAIL_FROM, hello@shop.example: aligned


def test_a_marketing_email_without_the_layout_has_no_unsubscribe_link(project_dir: Path) -> None:
    (project_dir / "templates/yoga/welcome.html").write_text("---\nsubject: Hi\n---\n<p>Hello {{ lead.first_name }}</p>\n")
    (project_dir / "templates/yoga/welcome.txt").unlink()
    found = warnings_of(project_dir)
    assert found == [f"{project_dir}/templates/yoga/welcome.html:1: warning: a marketing email without a visible unsubscribe link: use {{{{ unsubscribe_url }}}} in a link (the example layout has one); Gmail and Yahoo require it"]


def test_a_layout_showing_an_unset_postal_address_is_one_warning(project_dir: Path) -> None:
    found = warnings_of(project_dir, AUTOFUNNEL_POSTAL_ADDRESS=None)
    assert found == [f"{project_dir}/templates/layouts/base.html:1: warning: shows postal_address but AUTOFUNNEL_POSTAL_ADDRESS is not set: anti-spam law (CAN-SPAM, the EU) asks for your postal address in marketing email"]


def test_an_opened_condition_without_open_tracking_is_a_warning(project_dir: Path) -> None:
    edit(project_dir / "funnels/yoga.yml", "        if: {not: {deadline_passed: tripwire}}\n",
         "        if: {all: [{not: {deadline_passed: tripwire}}, {not: {opened: offer}}]}\n")
    edit(project_dir / "funnels/yoga.yml", "      - send: tripwire-offer\n", "      - send: tripwire-offer\n        id: offer\n")
    line = next(n for n, text in enumerate((project_dir / "funnels/yoga.yml").read_text().splitlines(), 1) if "opened: offer" in text)
    assert warnings_of(project_dir) == [f"{project_dir}/funnels/yoga.yml:{line}: warning: opened: offer is never true: yoga does not track opens (set track_opens: true in it, or AUTOFUNNEL_TRACK_OPENS=true)"]
    assert warnings_of(project_dir, AUTOFUNNEL_TRACK_OPENS="true") == []


def test_web_logs_the_same_warnings_once_at_start(project_dir: Path, tmp_path: Path) -> None:
    from services_at_hand import Part, clean_environment, free_port, http_status, wait_until

    from autofunnel.config import load_settings
    from autofunnel.services.project import load_project
    from autofunnel.services.setup_checks import setup_warnings

    env = clean_environment(database_url=f"sqlite:///{tmp_path / 'web.db'}")
    subprocess.run([sys.executable, "-m", "autofunnel", "db", "upgrade"], env=env, cwd=project_dir, check=True, capture_output=True)
    expected = [str(problem) for problem in setup_warnings(load_settings(project_dir, environ=env), load_project(project_dir).flows)]
    assert len(expected) == 3
    port = free_port()
    web = Part(["web", "--port", str(port)], env=env, cwd=project_dir, log=tmp_path / "web.log").start()
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, timeout=60, what=f"/healthz\n{web.output()}")
    finally:
        web.stop()
    for warning in expected:
        assert web.output().count(warning.replace(str(project_dir) + "/", "")) == 1, web.output()


# mail that scores clean ---------------------------------------------------------------------


def _welcome_html(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, **settings: str | None) -> str:
    from email import policy
    from email.parser import BytesParser

    rt = runtime_factory(project_dir, smtp_sink.url(), FixedClock(T0), **settings)
    subscribe(rt, parse_subscribe({"email": "ann@example.com", "funnel": "yoga", "first_name": "Ann"}, T0), consent={"via": "test"})
    run_tick(rt)
    message = BytesParser(policy=policy.default).parsebytes(smtp_sink.messages[-1].raw)
    return str(message.get_body(("html",)).get_content())  # type: ignore[union-attr]


def test_opens_are_not_tracked_by_default(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink) -> None:
    html = _welcome_html(runtime_factory, project_dir, smtp_sink, track_opens=None)
    assert "/t/o/" not in html and "http://testserver/t/c/" in html  # no pixel; clicks still tracked


def test_open_tracking_on_for_the_project(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink) -> None:
    assert "http://testserver/t/o/" in _welcome_html(runtime_factory, project_dir, smtp_sink, track_opens="true")


def test_open_tracking_off_for_the_project(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink) -> None:
    html = _welcome_html(runtime_factory, project_dir, smtp_sink, track_opens="false")
    assert "/t/o/" not in html and "http://testserver/t/c/" in html  # clicks still tracked


def test_open_tracking_off_for_one_funnel(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink) -> None:
    edit(project_dir / "funnels/yoga.yml", "title: Yoga for beginners\n", "title: Yoga for beginners\ntrack_opens: false\n")
    assert validate(project_dir, CLEAN)[0] == 0
    assert "/t/o/" not in _welcome_html(runtime_factory, project_dir, smtp_sink)


def test_track_opens_must_be_true_or_false(project_dir: Path) -> None:
    edit(project_dir / "funnels/yoga.yml", "title: Yoga for beginners\n", "title: Yoga for beginners\ntrack_opens: sometimes\n")
    code, lines = validate(project_dir, CLEAN)
    assert code == 1
    assert f"{project_dir}/funnels/yoga.yml:3: track_opens: expected true or false, got 'sometimes'" in lines


def _starter_html(project_dir: Path) -> str:
    from autofunnel.mail.render import Renderer

    context = {
        "lead": {"email": "a@b.example", "first_name": "Ann", "fields": {}, "tags": [], "timezone": None},
        "funnel": {"slug": "yoga", "title": "Yoga", "stage": "lead"}, "event": {}, "unsubscribe_url": "https://x.example/u/1",
        "postal_address": "1 Main St", "deadline": lambda name: T0, "offer_url": lambda name: "https://x.example/o",
        "countdown_url": lambda name: "https://x.example/c.gif",
    }
    return Renderer(project_dir / "templates").render("yoga", "welcome", context).html


def test_the_preheader_is_hidden_without_transparent_text(project_dir: Path) -> None:
    import re

    html = _starter_html(project_dir)
    span = re.search(r'<span class="preheader" style="([^"]*)"', html)
    assert span, html
    style = span.group(1).replace(" ", "")
    assert "transparent" not in html and "opacity:0" not in style and "visibility:hidden" not in style
    for rule in ("display:none", "max-height:0", "overflow:hidden", "mso-hide:all"):
        assert rule in style, style


def _contrast(foreground: str, background: str) -> float:
    def luminance(colour: str) -> float:
        channels = [int(colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_footer_text_meets_wcag_aa_contrast(project_dir: Path) -> None:
    import re

    html = _starter_html(project_dir)
    footer_at = html.index('class="footer"')
    background = re.findall(r"background-color:\s*(#[0-9a-fA-F]{6})", html[:footer_at])[-1]  # the footer table's own
    footer_colour = re.search(r"color:\s*(#[0-9a-fA-F]{6})", html[footer_at:].split(">", 1)[0].replace("background-color", "bg"))
    link_colour = re.search(r'<a href="https://x.example/u/1"[^>]*style="[^"]*color:\s*(#[0-9a-fA-F]{6})', html)
    assert footer_colour and link_colour, html[footer_at:footer_at + 600]
    assert _contrast(footer_colour.group(1), background) >= 4.5
    assert _contrast(link_colour.group(1), background) >= 4.5


# the first hour -----------------------------------------------------------------------------


def test_init_gitignores_everything_run_makes(tmp_path: Path) -> None:
    from autofunnel.config import BROKER_FOLDER
    from autofunnel.services.runtime import SECRET_FILE
    from autofunnel.services.starter import init_project

    init_project(tmp_path / "shop")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path / "shop", check=True)
    made = ["autofunnel.db", "autofunnel.db-wal", "autofunnel.db-shm", "autofunnel.db-lock", "outbox/d1.eml", SECRET_FILE, f"{BROKER_FOLDER}/data_in/1.msg"]
    ignored = subprocess.run(["git", "check-ignore", *made], cwd=tmp_path / "shop", capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == sorted(made)


# the plain-text part ------------------------------------------------------------------------


def test_the_text_part_is_wrapped_at_78_with_urls_whole() -> None:
    from autofunnel.mail.render import html_to_text

    url = "https://shop.example/checkout/" + "a" * 80
    text = html_to_text(f"<body><p>{'Breathe in slowly and hold it. ' * 8}<a href='{url}'>Check out</a> now.</p><ul><li>{'one pose a day ' * 9}</li></ul></body>")
    lines = text.splitlines()
    assert all(len(line) <= 78 for line in lines if url not in line), lines
    assert any(url in line for line in lines)  # the URL whole, on one line
    assert " ".join(text.split()).count("Breathe in slowly") == 8
    item = [line for line in lines if "one pose" in line]
    assert item[0].startswith("- ") and all(line.startswith("  one") or line.startswith("  pose") or line.startswith("  a day") for line in item[1:]), item


def test_table_cells_stay_apart_in_the_text_part() -> None:
    from autofunnel.mail.render import html_to_text

    text = html_to_text("<body><table><tr><td>1 × Yoga mat</td><td>29.00 EUR</td></tr><tr><td>Total</td><td>29.00 EUR</td></tr></table></body>")
    assert text.splitlines() == ["1 × Yoga mat | 29.00 EUR", "Total | 29.00 EUR"]


# production by the README -------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_the_docker_build_context_holds_no_project_state(tmp_path: Path) -> None:
    from autofunnel.services.starter import init_project

    checkout = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_bytes(b"")
    init_project(checkout / "shop")
    private = ["shop/autofunnel.db", "shop/autofunnel.db-wal", "shop/autofunnel.db-lock", "shop/outbox/d1.eml",
               "shop/.autofunnel-secret", "shop/.autofunnel-broker/data_in/1.msg", ".env", "autofunnel/__pycache__/cli.cpython-311.pyc"]
    for name in private:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("secret")
    patterns = dockerignore_patterns(REPO)
    every = sorted(p.relative_to(checkout).as_posix() for p in checkout.rglob("*") if p.is_file())
    sent = [name for name in every if not docker_ignored(patterns, name)]
    assert not [name for name in sent if name.startswith("shop/") or name in private], sent
    needed = [name for name in tracked if name.startswith(("autofunnel/", "workers/", "templates/")) or name in ("pyproject.toml", "README.md")]
    assert needed and set(needed) <= set(sent), sorted(set(needed) - set(sent))
    assert not [name for name in sent if name.startswith(("tests/", "bench/", ".git"))], sent


def test_the_matcher_follows_dockers_rules() -> None:
    assert docker_ignored(["*.db"], "a.db") and not docker_ignored(["*.db"], "shop/a.db")  # `*` stays at the top
    assert docker_ignored(["**/*.db"], "shop/a.db") and docker_ignored(["outbox"], "outbox/x.eml")
    assert not docker_ignored(["*", "!autofunnel"], "autofunnel/cli.py")
    assert docker_ignored(["*", "!autofunnel", "**/__pycache__"], "autofunnel/__pycache__/x.pyc")


def test_compose_needs_the_project_folder_and_base_url() -> None:
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    app = compose["services"]["web"]
    assert app["volumes"] == ["${AUTOFUNNEL_PROJECT:?set AUTOFUNNEL_PROJECT to your project folder, e.g. ./shop}:/project:ro"]
    assert app["environment"]["AUTOFUNNEL_BASE_URL"].startswith("${AUTOFUNNEL_BASE_URL:?")
    readme = (REPO / "README.md").read_text()
    assert "AUTOFUNNEL_PROJECT=./shop AUTOFUNNEL_BASE_URL=https://" in readme


def test_a_folder_without_funnels_stops_at_start_with_a_clear_message(tmp_path: Path, database_url: str) -> None:
    from autofunnel.config import load_settings
    from autofunnel.errors import ProjectError
    from autofunnel.services.runtime import Runtime

    with pytest.raises(ProjectError, match=r"is not an autofunnel project: it has no funnels/ folder\. Point AUTOFUNNEL_PROJECT_DIR"):
        Runtime.open(load_settings(tmp_path, environ={"AUTOFUNNEL_DATABASE_URL": database_url}))
