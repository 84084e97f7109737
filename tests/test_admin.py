"""The admin's pages through Flask's test client, on this run's real database.

Figures on a page must be the API's: the tests read the report and the lead
over `/api/v1` and look for the same numbers in the HTML.
"""

from __future__ import annotations

import csv
import io
import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from admin_site import ADMIN_EMAIL, CHANNELS, Site, build_site, csrf_token, log_in
from autofunnel.report_format import report_csv
from autofunnel.store.models import Lead, Spend
from autofunnel.web.admin import charts

pytestmark = pytest.mark.db


@pytest.fixture
def site(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> Site:
    return build_site(project_dir, runtime_factory, tmp_path / "outbox")


@pytest.fixture
def client(site: Site) -> FlaskClient:
    client = site.app.test_client()
    assert log_in(client).status_code == 302
    return client


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# Signing in ---------------------------------------------------------------------------


def test_pages_need_a_login_and_the_root_leads_to_the_admin(site: Site) -> None:
    anonymous = site.app.test_client()
    assert anonymous.get("/").headers["Location"] == "/admin/"
    for path in ("/admin/", "/admin/funnels/yoga", "/admin/flows/yoga", "/admin/leads", "/admin/leads/1", "/admin/spend", "/admin/files", "/admin/preview"):
        response = anonymous.get(path)
        assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login"), path


def test_a_wrong_password_is_refused_and_the_right_one_opens_the_admin(site: Site) -> None:
    client = site.app.test_client()
    refused = log_in(client, password="not the password")
    assert refused.status_code == 401 and "Wrong email or password" in refused.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302
    accepted = log_in(client)
    assert accepted.status_code == 302 and accepted.headers["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_a_form_posted_without_its_csrf_token_is_refused_and_changes_nothing(site: Site, client: FlaskClient) -> None:
    response = client.post("/admin/spend", data={"channel": "instagram", "amount": "10", "date": "2026-03-10"})
    assert response.status_code == 400
    with site.rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Spend)) == 0
    assert site.app.test_client().post("/admin/login", data={"email": ADMIN_EMAIL, "password": "x"}).status_code == 400


def test_failed_logins_are_throttled_per_account_and_per_ip(site: Site) -> None:
    client = site.app.test_client()
    for _ in range(5):
        assert log_in(client, email="victim@shop.example", password="guess", REMOTE_ADDR="10.9.9.1").status_code == 401
    blocked = log_in(client, email="victim@shop.example", password="guess", REMOTE_ADDR="10.9.9.2")
    assert blocked.status_code == 429, "the account is throttled whatever the address"
    for n in range(20):
        log_in(client, email=f"someone{n}@shop.example", password="guess", REMOTE_ADDR="10.9.9.3")
    assert log_in(client, REMOTE_ADDR="10.9.9.3").status_code == 429, "the address is throttled whatever the account"
    assert log_in(client, REMOTE_ADDR="10.9.9.4").status_code == 302, "another address with the right password gets in"


def test_only_failed_logins_count_and_the_refusal_is_the_login_page(site: Site) -> None:
    for _ in range(25):  # more than the per-IP and per-account limits, all right
        assert log_in(site.app.test_client(), REMOTE_ADDR="10.9.8.1").status_code == 302
    client = site.app.test_client()
    for _ in range(5):
        assert log_in(client, password="guess", REMOTE_ADDR="10.9.8.2").status_code == 401
    refused = log_in(client, REMOTE_ADDR="10.9.8.2")  # now even the right password waits: the account is throttled
    assert refused.status_code == 429 and "Too many failed attempts" in refused.get_data(as_text=True)
    assert client.get("/admin/login", environ_base={"REMOTE_ADDR": "10.9.8.2"}).status_code == 200  # the page itself is never limited


def test_admin_pages_carry_security_headers_and_a_safe_session_cookie(site: Site) -> None:
    client = site.app.test_client()
    response = log_in(client)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/admin/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "<script" not in page.get_data(as_text=True) and " style=" not in page.get_data(as_text=True)


def test_the_session_cookie_is_secure_behind_https(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> None:
    site = build_site(project_dir, runtime_factory, tmp_path / "outbox", base_url="https://shop.example")
    assert "Secure" in log_in(site.app.test_client()).headers["Set-Cookie"]


def test_logging_out_ends_the_session(client: FlaskClient) -> None:
    token = csrf_token(client.get("/admin/").get_data(as_text=True))
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/").status_code == 302


def test_the_public_one_click_unsubscribe_stays_free_of_csrf(site: Site) -> None:
    message = sorted(site.outbox.glob("*.eml"))[0].read_text()
    path = re.search(r"List-Unsubscribe: <http://testserver(/u/[^>]+)>", message.replace("\n ", " "))
    assert path is not None
    answer = site.app.test_client().post(path.group(1), data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200


def test_a_post_to_any_other_blueprint_needs_no_csrf_token(site: Site) -> None:
    """Webhooks and public forms added by other blueprints are not caught by the admin's CSRF check."""
    from flask import Blueprint

    from autofunnel.web import create_app

    hooks = Blueprint("hooks_probe", __name__)
    hooks.add_url_rule("/hooks/probe", "probe", lambda: "received", methods=["POST"])
    app = create_app(runtime=site.rt)
    app.register_blueprint(hooks)
    assert app.test_client().post("/hooks/probe", data={"x": "1"}).get_data(as_text=True) == "received"
    assert app.test_client().post("/admin/login", data={"email": ADMIN_EMAIL, "password": "x"}).status_code == 400


def test_user_and_apikey_commands_and_a_deleted_user_is_logged_out(site: Site, client: FlaskClient) -> None:
    from click.testing import CliRunner

    from autofunnel.cli import main

    env = {"AUTOFUNNEL_PROJECT_DIR": str(site.rt.settings.project_dir), "AUTOFUNNEL_DATABASE_URL": site.rt.settings.database_url or ""}
    runner = CliRunner()
    users = runner.invoke(main, ["user", "list"], env=env)
    assert users.exit_code == 0 and users.output.startswith(f"{ADMIN_EMAIL}  created ")
    keys = runner.invoke(main, ["apikey", "list"], env=env)
    shown = keys.output.split()[0]
    assert keys.exit_code == 0 and shown.endswith("...") and "live" in keys.output
    revoked = runner.invoke(main, ["apikey", "revoke", shown], env=env)  # pasted as listed, dots and all
    assert revoked.exit_code == 0 and revoked.output.startswith("revoked API key 'shop'")
    assert site.app.test_client().get("/api/v1/reports/yoga", headers=site.api).status_code == 401
    assert runner.invoke(main, ["apikey", "revoke", shown], env=env).exit_code == 2
    assert runner.invoke(main, ["user", "delete", "nobody@shop.example"], env=env).exit_code == 2
    assert client.get("/admin/").status_code == 200
    deleted = runner.invoke(main, ["user", "delete", ADMIN_EMAIL.upper()], env=env)
    assert deleted.exit_code == 0 and deleted.output == f"deleted admin user {ADMIN_EMAIL}\n"
    assert client.get("/admin/").status_code == 302


# Home and a funnel --------------------------------------------------------------------


def test_home_shows_each_flow_with_the_reports_figures_and_sending_health(site: Site, client: FlaskClient) -> None:
    report = site.api_get("/api/v1/reports/yoga")
    html = client.get("/admin/").get_data(as_text=True)
    card = html[html.index('data-flow="yoga"'):html.index('data-flow="abandoned-cart"')]
    assert re.search(rf'class="figure entered">{report["stages"][0]["reached"]}<', card)
    assert f"{report['overall_conversion'] * 100:.1f} %" in card
    assert f"{report['revenue']['total']:.2f} EUR" in card
    assert "Sending" in html and ">ok<" in html


def test_a_funnel_page_shows_the_apis_numbers(site: Site, client: FlaskClient) -> None:
    report = site.api_get("/api/v1/reports/yoga")
    html = client.get("/admin/funnels/yoga").get_data(as_text=True)
    rows = re.findall(r'data-stage="([^"]+)">\s*<div class="stage-label"><strong>[^<]+</strong> <span class="reached">(\d+)</span>', html)
    assert [(name, int(n)) for name, n in rows] == [(s["stage"], s["reached"]) for s in report["stages"]]
    assert [n for _, n in rows][:3] == ["12", "6", "3"]
    table = text_of(html[html.index('class="stages-table"'):])
    for stage in report["stages"]:
        assert f"{stage['stage']} {stage['reached']} {stage['skipped']}" in table
    emails = text_of(html[html.index('class="steps-table"'):])
    welcome = next(s for s in report["steps"] if s["step"] == "welcome")
    assert f"welcome {welcome['sent']} " in emails and welcome["sent"] == 12
    assert f" {welcome['purchases_7d']} {welcome['revenue_7d']:.2f}" in emails and welcome["revenue_7d"] > 0
    money = report["revenue"]
    assert money["refunded"] == 49.5 and money["total"] == money["gross"] - 49.5 and money["refunded_orders"] == 1
    for figure, value in (("net", money["total"]), ("gross", money["gross"]), ("refunded", money["refunded"])):
        assert re.search(rf'id="revenue-{figure}">{value:.2f}\b', html), figure
    assert f"{report['overall_conversion'] * 100:.1f} %" in html


def test_by_channel_draws_one_small_funnel_per_channel_with_the_apis_numbers(site: Site, client: FlaskClient) -> None:
    report = site.api_get("/api/v1/reports/yoga", by="channel", interval="week")
    html = client.get("/admin/funnels/yoga?by=channel&interval=week").get_data(as_text=True)
    groups = re.findall(r'data-group="([^"]+)"', html)
    assert sorted(groups) == sorted(CHANNELS)
    for group in report["groups"]:
        section = html[html.index(f'data-group="{group["value"]}"'):]
        first = re.search(r'class="reached">(\d+)<', section)
        assert first is not None and int(first.group(1)) == group["stages"][0]["reached"] == CHANNELS[group["value"]]
    assert "Trend per week" in html and html.count('class="line"') == 2


def test_every_control_of_the_funnel_page_answers(client: FlaskClient) -> None:
    for query in ("days=7", "days=90", "days=custom&from=2026-03-01&to=2026-03-16", "mode=calendar", "interval=day",
                  "interval=month", "by=product", "by=owner", "by=field:plan", "attribution=linear", "attribution=time_decay"):
        assert client.get(f"/admin/funnels/yoga?{query}").status_code == 200, query


def test_the_csv_is_exactly_what_the_page_shows(site: Site, client: FlaskClient) -> None:
    response = client.get("/admin/funnels/yoga.csv?by=channel")
    assert response.mimetype == "text/csv"
    assert response.get_data(as_text=True) == report_csv(site.api_get("/api/v1/reports/yoga", by="channel"))
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert {row["value"] for row in rows if row["section"] == "by channel"} == set(CHANNELS)


def test_a_sequence_has_no_report_page_but_a_flow_map(client: FlaskClient) -> None:
    assert client.get("/admin/funnels/abandoned-cart").headers["Location"] == "/admin/flows/abandoned-cart"
    assert client.get("/admin/funnels/nope").status_code == 404


# The flow map, leads ------------------------------------------------------------------


def test_the_flow_map_shows_who_waits_where_and_links_to_them(site: Site, client: FlaskClient) -> None:
    html = client.get("/admin/flows/yoga").get_data(as_text=True)
    assert [m for m in re.findall(r'data-stage="([^"]+)"', html)] == ["lead", "tripwire", "customer", "vip"]
    welcome = html[html.index('data-step="welcome"'):]
    assert re.search(r"12 sent", welcome[:600])
    waiting = re.findall(r'<a class="waiting" href="([^"]+)">(\d+) waiting</a>', html)
    assert sum(int(n) for _, n in waiting) == 12, "every lead waits on exactly one step of its stage"
    link, count = waiting[0]
    listed = client.get(link.replace("&amp;", "&")).get_data(as_text=True)
    assert listed.count('href="/admin/leads/') == int(count)


def test_leads_are_found_by_email_prefix_name_and_tag_and_filtered(client: FlaskClient) -> None:
    def found(query: str) -> list[str]:
        html = client.get(f"/admin/leads?{query}").get_data(as_text=True)
        return re.findall(r'href="/admin/leads/\d+">([^<]+)</a>', html)

    assert sorted(found("q=google")) == [f"google{i}@example.com" for i in range(4)]
    assert found("q=Lead3") == ["instagram2@example.com"]
    assert sorted(found("q=yoga-fan")) == ["google0@example.com", "instagram0@example.com", "newsletter0@example.com"]
    assert len(found("funnel=yoga&stage=customer")) == 3
    assert found("status=unsubscribed") == []


def test_the_leads_list_pages_by_keyset(site: Site, client: FlaskClient) -> None:
    from autofunnel.services.lead_search import LeadFilter, find_leads

    first = find_leads(site.rt, LeadFilter(), page_size=5)
    second = find_leads(site.rt, LeadFilter(before_id=first.next_before_id), page_size=5)
    third = find_leads(site.rt, LeadFilter(before_id=second.next_before_id), page_size=5)
    ids = [r.id for r in first.rows + second.rows + third.rows]
    assert len(ids) == len(set(ids)) == 12 and ids == sorted(ids, reverse=True) and third.next_before_id is None


def test_a_lead_page_tells_the_leads_story_and_its_actions_work(site: Site, client: FlaskClient) -> None:
    lead = site.api_get("/api/v1/leads/google1@example.com")
    html = client.get(f"/admin/leads/{lead['id']}").get_data(as_text=True)
    for entry in lead["timeline"]:
        assert entry["decision"] in html
    assert "sent" in html and "welcome" in html and "google" in html and '"via": "api"' not in html
    token = csrf_token(html)
    client.post(f"/admin/leads/{lead['id']}/unsubscribe", data={"csrf_token": token})
    assert site.api_get("/api/v1/leads/google1@example.com")["status"] == "unsubscribed"
    client.post(f"/admin/leads/{lead['id']}/erase", data={"csrf_token": token, "confirm": "someone-else@example.com"})
    assert site.api_get(f"/api/v1/leads/{lead['id']}")["status"] == "unsubscribed", "a wrong confirmation erases nothing"
    client.post(f"/admin/leads/{lead['id']}/erase", data={"csrf_token": token, "confirm": "Google1@example.com "})
    assert site.api_get(f"/api/v1/leads/{lead['id']}")["status"] == "erased"


# Preview, spend, files ----------------------------------------------------------------


def test_the_preview_renders_a_real_leads_email_and_a_test_send_counts_nowhere(site: Site, client: FlaskClient) -> None:
    html = client.get("/admin/preview?flow=yoga&template=welcome&lead=google1@example.com").get_data(as_text=True)
    welcome = next(d for d in site.api_get("/api/v1/leads/google1@example.com")["deliveries"] if d["step"] == "welcome")
    sent = next(p for p in site.outbox.glob("*.eml") if f"Message-ID: <d{welcome['id']}." in p.read_text())
    subject = re.search(r"^Subject: (.+)$", sent.read_text(), re.M)
    assert subject is not None and subject.group(1) in unescape(html)
    raw = client.get("/admin/preview/raw?flow=yoga&template=welcome&lead=google1@example.com")
    assert "sandbox" in raw.headers["Content-Security-Policy"] and "/t/o/" not in raw.get_data(as_text=True)
    before = len(list(site.outbox.glob("*.eml")))
    report = site.api_get("/api/v1/reports/yoga")
    client.post("/admin/preview/send", data={"csrf_token": csrf_token(html), "flow": "yoga", "template": "welcome", "lead": "", "at": "", "to": "me@shop.example"})
    written = sorted(site.outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime)
    assert len(written) == before + 1 and "Subject: [TEST]" in written[-1].read_text()
    assert site.api_get("/api/v1/reports/yoga") == report


def test_spend_is_added_listed_and_corrected(site: Site, client: FlaskClient) -> None:
    token = csrf_token(client.get("/admin/spend").get_data(as_text=True))
    client.post("/admin/spend", data={"csrf_token": token, "channel": "instagram", "amount": "60", "date": "2026-03-10", "currency": "EUR"})
    client.post("/admin/spend", data={"csrf_token": token, "channel": "instagram", "amount": "40", "date": "2026-03-10", "currency": "EUR"})
    refused = client.post("/admin/spend", data={"csrf_token": token, "channel": "instagram", "amount": "lots", "date": "2026-03-10"})
    assert refused.status_code == 400 and "not an amount" in refused.get_data(as_text=True)
    page = client.get("/admin/spend").get_data(as_text=True)
    assert "100.00" in text_of(page)
    report = site.api_get("/api/v1/reports/yoga")
    assert report["spend"][0]["spend"] == 100.0
    assert f"{report['spend'][0]['cost_per_lead']}" in client.get("/admin/funnels/yoga").get_data(as_text=True)
    entry = re.search(r'action="/admin/spend/(\d+)"', page)
    assert entry is not None
    client.post(f"/admin/spend/{entry.group(1)}", data={"csrf_token": token, "amount": "0"})
    with site.rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Spend)) == 0


def test_files_show_the_plan_for_leads_waiting_on_a_removed_step(site: Site, client: FlaskClient) -> None:
    assert "No waiting lead is affected" in client.get("/admin/files").get_data(as_text=True)
    waiting = site.api_get("/api/v1/leads/google3@example.com")["enrollments"][0]
    assert (waiting["stage"], waiting["step"], waiting["status"]) == ("lead", "wait-after-tripwire-offer", "active")
    path = site.rt.project.root / "funnels" / "yoga.yml"
    path.write_text(path.read_text().replace("      - wait: 1d\n      - send: tripwire-reminder", "      - send: tripwire-reminder", 1))
    html = client.get("/admin/files").get_data(as_text=True)
    row = re.search(r"<td>yoga</td><td>lead</td><td>wait-after-tripwire-offer</td><td class=\"num\">(\d+)</td><td class=\"wrap\">([^<]+)</td>", html)
    assert row is not None, html[html.index("<h2>Plan"):][:800]
    waiting_there = [lead for lead in ("google2", "google3", "instagram3", "instagram4", "instagram5", "newsletter1")
                     if site.api_get(f"/api/v1/leads/{lead}@example.com")["enrollments"][0]["step"] == "wait-after-tripwire-offer"]
    assert int(row.group(1)) == len(waiting_there) and "tripwire-reminder" in row.group(2)


def test_files_show_validate_problems_with_file_and_line(site: Site, client: FlaskClient) -> None:
    assert "No errors" in client.get("/admin/files").get_data(as_text=True)
    path = site.rt.project.root / "funnels" / "yoga.yml"
    path.write_text(path.read_text().replace("wait: 1d", "wait: 1 day", 1))
    html = client.get("/admin/files").get_data(as_text=True)
    assert re.search(r"yoga\.yml:\d+", html) and "bad duration" in html


def test_a_fresh_install_says_what_to_do_next(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> None:
    from autofunnel.clock import FixedClock
    from autofunnel.services.credentials import create_user
    from autofunnel.web import create_app

    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", FixedClock(site_now()))
    create_user(rt.db, rt.clock, ADMIN_EMAIL, "correct horse battery")
    client = create_app(runtime=rt).test_client()
    log_in(client)
    html = client.get("/admin/").get_data(as_text=True)
    assert "No leads yet" in html and "autofunnel apikey create" in html and "/api/v1/subscribe" in html
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 0


def site_now() -> Any:
    from admin_site import NOW

    return NOW


# Charts -------------------------------------------------------------------------------


def test_funnel_bars_narrow_with_reached_and_stay_centred() -> None:
    bars = charts.funnel_bars([("lead", 1000), ("tripwire", 520), ("customer", 0), ("vip", 1)], width=600)
    assert [round(b.width) for b in bars] == [600, 312, 0, 2]
    assert all(abs(b.x + b.width / 2 - 300) < 1e-9 for b in bars)
    assert [b.y for b in bars] == sorted(b.y for b in bars)
    assert charts.funnel_bars([("lead", 0)])[0].width == 0


def test_sparkline_and_line_chart_fit_their_box() -> None:
    points = [tuple(map(float, p.split(","))) for p in charts.sparkline([0, 5, 10], width=100, height=20).split()]
    assert points[0][0] == 2 and points[-1][0] == 98 and points[-1][1] == 2 and points[0][1] == 18
    chart = charts.line_chart(["a", "b", "c"], [("x", [1, None, 3])], width=200, height=100)
    assert chart.y_top == 3 and len(chart.lines[0][1].split()) == 2
    assert len(chart.dots) == 2
    lone = charts.line_chart(["a"], [("x", [5])], width=200, height=100)
    assert lone.dots and lone.lines[0][1].count(",") == 1  # one point: no line, but a dot


def test_the_trend_covers_every_period_of_the_range() -> None:
    from datetime import date

    assert charts.period_starts(date(2026, 3, 1), date(2026, 3, 3), "day") == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert charts.period_starts(date(2026, 3, 4), date(2026, 3, 16), "week") == ["2026-03-02", "2026-03-09", "2026-03-16"]
    assert charts.period_starts(date(2026, 1, 31), date(2026, 3, 1), "month") == ["2026-01-01", "2026-02-01", "2026-03-01"]


def test_the_trend_chart_draws_quiet_days_and_the_days_with_leads(client: FlaskClient) -> None:
    html = client.get("/admin/funnels/yoga", query_string={"days": "7", "interval": "day"}).get_data(as_text=True)
    entries = html[html.index("Entries"):html.index("Overall conversion</h3>") if "Overall conversion</h3>" in html else None]
    points = re.search(r'<polyline class="line" points="([^"]+)"', entries)
    assert points is not None and len(points.group(1).split()) == 7
