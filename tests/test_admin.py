"""The admin through Flask's test client, on this run's real database: login, CSRF, headers,
throttling, and every page showing the report service's own figures."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from autofunnel.cli import main
from autofunnel.clock import FixedClock
from autofunnel.report_format import percent, report_csv
from autofunnel.services.credentials import create_api_key, create_user
from autofunnel.services.runtime import Runtime
from autofunnel.services.scheduler import run_tick
from autofunnel.web import create_app

pytestmark = pytest.mark.db

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class Site:
    def __init__(self, rt: Runtime, app: Flask, key: str, outbox: Path) -> None:
        self.rt, self.app, self.key, self.outbox = rt, app, key, outbox
        self.client: FlaskClient = app.test_client()
        self.api_headers = {"Authorization": f"Bearer {key}"}

    def api(self, path: str, body: Any) -> Any:
        response = self.client.post(path, json=body, headers=self.api_headers)
        assert response.status_code in (200, 201, 202), response.get_data(as_text=True)
        return response.json

    def csrf(self, path: str) -> str:
        page = self.client.get(path).get_data(as_text=True)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found, page
        return found.group(1)

    def login(self, email: str = "seller@example.com", password: str = PASSWORD) -> Any:
        return self.client.post("/admin/login", data={"email": email, "password": password, "csrf_token": self.csrf("/admin/login")})


@pytest.fixture
def site(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> Site:
    clock = FixedClock(NOW)
    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", clock, mail_from="shop@example.com")
    rt.rng = random.Random(0)
    _, key = create_api_key(rt.db, clock, "shop")
    create_user(rt.db, clock, "seller@example.com", PASSWORD)
    return Site(rt, create_app(runtime=rt), key, tmp_path / "outbox")


def load_leads(site: Site) -> None:
    for i in range(12):
        channel = "google" if i % 3 else "instagram"
        site.api("/api/v1/subscribe", {"email": f"l{i}@example.com", "funnel": "yoga", "at": iso(NOW - timedelta(days=i % 4, hours=1)), "source": {"channel": channel}})
    buys = [{"type": "purchase", "email": f"l{i}@example.com", "at": iso(NOW - timedelta(minutes=30)), "properties": {"product": "mini-course", "amount": 17, "currency": "EUR"}} for i in range(5)]
    buys += [{"type": "purchase", "email": f"l{i}@example.com", "at": iso(NOW - timedelta(minutes=20)), "properties": {"product": "full-course", "amount": 97, "currency": "EUR"}} for i in range(2)]
    site.api("/api/v1/events", buys)


def text_of(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


# Login, sessions, CSRF, headers ----------------------------------------------------------


def test_pages_need_a_login_and_the_root_leads_to_the_admin(site: Site) -> None:
    assert site.client.get("/").headers["Location"].endswith("/admin/")
    for path in ("/admin/", "/admin/funnels/yoga", "/admin/spend", "/admin/files"):
        response = site.client.get(path)
        assert response.status_code == 302 and "/admin/login" in response.headers["Location"], path


def test_login_with_the_right_password_and_logout(site: Site) -> None:
    wrong = site.login(password="not the password")
    assert wrong.status_code == 401 and "Wrong email or password" in wrong.get_data(as_text=True)
    assert site.client.get("/admin/").status_code == 302
    right = site.login()
    assert right.status_code == 302 and right.headers["Location"] == "/admin/"
    assert site.client.get("/admin/").status_code == 200
    cookie = right.headers.get_all("Set-Cookie")
    assert any("HttpOnly" in c and "SameSite=Lax" in c and "Secure" not in c for c in cookie if c.startswith("session="))
    token = site.csrf("/admin/")
    assert site.client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert site.client.get("/admin/").status_code == 302


def test_next_goes_only_inside_the_admin(site: Site) -> None:
    token = site.csrf("/admin/login")
    response = site.client.post("/admin/login", data={"email": "seller@example.com", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/admin"})
    assert response.headers["Location"] == "/admin/"


def test_the_cookie_is_secure_when_the_base_url_is_https(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> None:
    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", FixedClock(NOW), base_url="https://shop.example")
    create_user(rt.db, rt.clock, "seller@example.com", PASSWORD)
    client = create_app(runtime=rt).test_client()
    page = client.get("/admin/login", base_url="https://localhost").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    response = client.post("/admin/login", data={"email": "seller@example.com", "password": PASSWORD, "csrf_token": token},
                           base_url="https://localhost", headers={"Referer": "https://localhost/admin/login"})
    assert response.status_code == 302
    assert any(c.startswith("session=") and "Secure" in c for c in response.headers.get_all("Set-Cookie"))


def test_a_form_without_its_csrf_token_is_refused(site: Site) -> None:
    assert site.client.post("/admin/login", data={"email": "seller@example.com", "password": PASSWORD}).status_code == 400
    site.login()
    refused = site.client.post("/admin/spend", data={"channel": "google", "amount": "10", "date": "2026-03-01"})
    assert refused.status_code == 400 and "CSRF" in refused.get_data(as_text=True)
    assert site.client.post("/admin/logout").status_code == 400
    assert site.client.get("/admin/").status_code == 200


def test_the_api_and_the_one_click_unsubscribe_need_no_csrf_token(site: Site) -> None:
    site.login()
    lead = site.client.post("/api/v1/subscribe", json={"email": "x@example.com", "funnel": "yoga"}, headers=site.api_headers)
    assert lead.status_code == 201
    site.api("/api/v1/events", {"type": "confirmed", "lead_id": lead.json["lead_id"]})
    run_tick(site.rt)
    message = message_from_bytes(next(Path(site.outbox).glob("*.eml")).read_bytes(), policy=policy.default)
    link = re.search(r"<(http[^>]+)>", str(message["List-Unsubscribe"])).group(1)  # type: ignore[union-attr]
    response = site.client.post(urlsplit(link).path, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200 and response.get_data(as_text=True) == "unsubscribed\n"


def test_admin_pages_carry_security_headers(site: Site) -> None:
    for path in ("/admin/login", "/admin/static/admin.css"):
        with site.client.get(path) as response:
            headers = response.headers
        assert response.headers["X-Frame-Options"] == "DENY"
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script" not in site.client.get("/admin/login").get_data(as_text=True)


def test_logins_are_throttled_per_account_and_per_address(site: Site) -> None:
    site.app.config["AUTOFUNNEL_LOGIN_LIMITS"] = ("6 per minute", "3 per minute")
    codes = [site.login(password="wrong password!").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    # the account is locked for now, even with the right password
    assert site.login().status_code == 429
    # another account from the same address: two more tries, then the address's limit
    assert [site.login(email="other@example.com", password="x" * 10).status_code for _ in range(2)] == [401, 429]


def test_a_deleted_user_is_logged_out(site: Site) -> None:
    site.login()
    assert site.client.get("/admin/").status_code == 200
    env = {"AUTOFUNNEL_PROJECT_DIR": str(site.rt.settings.project_dir), "AUTOFUNNEL_DATABASE_URL": site.rt.settings.database_url or ""}
    result = CliRunner().invoke(main, ["user", "delete", "Seller@example.com"], env=env)
    assert result.exit_code == 0 and result.output == "deleted admin user seller@example.com\n"
    assert site.client.get("/admin/").status_code == 302


def test_user_and_apikey_commands(site: Site) -> None:
    env = {"AUTOFUNNEL_PROJECT_DIR": str(site.rt.settings.project_dir), "AUTOFUNNEL_DATABASE_URL": site.rt.settings.database_url or ""}
    runner = CliRunner()
    listed = runner.invoke(main, ["user", "list"], env=env)
    assert listed.exit_code == 0 and listed.output.startswith("seller@example.com  created 2026-03-10 12:00")
    assert runner.invoke(main, ["user", "delete", "nobody@example.com"], env=env).exit_code == 2
    keys = runner.invoke(main, ["apikey", "list"], env=env)
    prefix = site.key[:12]
    assert keys.exit_code == 0 and keys.output.startswith(f"{prefix}...  shop  created")
    assert site.client.get("/api/v1/reports/yoga", headers=site.api_headers).status_code == 200
    revoked = runner.invoke(main, ["apikey", "revoke", prefix + "..."], env=env)
    assert revoked.exit_code == 0 and revoked.output == f"revoked API key 'shop' ({prefix}...)\n"
    assert site.client.get("/api/v1/reports/yoga", headers=site.api_headers).status_code == 401
    assert runner.invoke(main, ["apikey", "revoke", prefix], env=env).exit_code == 2
    assert "revoked" in runner.invoke(main, ["apikey", "list"], env=env).output


# Pages ---------------------------------------------------------------------------------


def test_home_teaches_a_fresh_install_what_to_do(site: Site) -> None:
    site.login()
    page = site.client.get("/admin/").get_data(as_text=True)
    assert "No leads in the last 30 days" in page and "autofunnel apikey create" in page and "/api/v1/subscribe" in page
    assert "Sending is working" in page


def test_home_shows_each_flow_with_the_reports_figures_and_sending_health(site: Site) -> None:
    load_leads(site)
    site.login()
    page = site.client.get("/admin/").get_data(as_text=True)
    api = site.client.get("/api/v1/reports/yoga", headers=site.api_headers).json
    row = re.search(r'<tr data-flow="yoga">(.*?)</tr>', page, re.S).group(1)  # type: ignore[union-attr]
    assert f'data-figure="entered">{api["stages"][0]["reached"]}<' in row
    assert percent(api["overall_conversion"]) in row and f'{api["revenue"]["total"]:,.2f}' in row
    assert 'data-flow="abandoned-cart"' in page and "<polyline" in row
    assert "No leads in the last 30 days" not in page
    assert "Queue depth" in page and "Due now" in page


def test_the_funnel_page_shows_the_apis_numbers(site: Site) -> None:
    load_leads(site)
    site.login()
    for params in ({}, {"period": "7", "mode": "calendar"}, {"period": "custom", "from": "2026-03-01", "to": "2026-03-10", "by": "channel", "interval": "day", "attribution": "linear"}):
        page = site.client.get("/admin/funnels/yoga", query_string=params)
        assert page.status_code == 200, page.get_data(as_text=True)
        html = page.get_data(as_text=True)
        api_params = {k: v for k, v in params.items() if k != "period"}
        if params.get("period") == "7":
            api_params |= {"from": "2026-03-04", "to": "2026-03-10"}
        api = site.client.get("/api/v1/reports/yoga", query_string=api_params, headers=site.api_headers).json
        assert [s["reached"] for s in api["stages"]][:2] != [0, 0]
        for stage in api["stages"]:
            assert f'data-stage="{stage["stage"]}" data-reached="{stage["reached"]}"' in html
            row = re.search(rf'<tr data-stage="{stage["stage"]}">(.*?)</tr>', html, re.S).group(1)  # type: ignore[union-attr]
            assert f'data-figure="reached">{stage["reached"]}<' in row
            assert f'>{percent(stage["conversion_from_previous"])}<' in row
        assert f'data-figure="overall_conversion">{percent(api["overall_conversion"])}<' in html
        for step in api["steps"]:
            assert f'<tr data-step="{step["step"]}"><td>{step["stage"]}</td><td>{step["step"]}</td><td class="num" data-figure="sent">{step["sent"]}<' in html
        for group in api.get("groups", []):
            assert f'data-group="{group["value"]}"' in html
        if api.get("periods"):
            assert 'class="trend"' in html
        if api.get("attribution"):
            assert "Attribution (linear" in html


def test_the_csv_is_the_report_on_the_page(site: Site) -> None:
    load_leads(site)
    site.login()
    response = site.client.get("/admin/funnels/yoga", query_string={"period": "30", "by": "channel", "format": "csv"})
    assert response.headers["Content-Type"].startswith("text/csv")
    api = site.client.get("/api/v1/reports/yoga", query_string={"by": "channel", "from": "2026-02-09", "to": "2026-03-10"}, headers=site.api_headers).json
    assert response.get_data(as_text=True) == report_csv(api)


def test_bad_report_controls_are_explained(site: Site) -> None:
    site.login()
    response = site.client.get("/admin/funnels/yoga", query_string={"period": "custom", "from": "2026-03-10", "to": "2026-03-01"})
    assert response.status_code == 400 and "is after" in response.get_data(as_text=True)
    assert site.client.get("/admin/funnels/nope").status_code == 404
    assert site.client.get("/admin/funnels/abandoned-cart").status_code == 404


def test_spend_is_added_listed_changed_and_deleted(site: Site) -> None:
    load_leads(site)
    site.login()
    token = site.csrf("/admin/spend")
    added = site.client.post("/admin/spend", data={"channel": "google", "amount": "40", "date": "2026-03-09", "currency": "EUR", "csrf_token": token})
    assert added.status_code == 302
    bad = site.client.post("/admin/spend", data={"channel": "google", "amount": "-1", "date": "2026-03-09", "currency": "EUR", "csrf_token": token})
    assert bad.status_code == 400 and "is not an amount" in bad.get_data(as_text=True)
    page = site.client.get("/admin/spend").get_data(as_text=True)
    assert '<tr data-spend="google"><td>2026-03-09</td><td>google</td><td class="num">40.00</td>' in page
    entry = re.search(r'action="/admin/spend/(\d+)"', page).group(1)  # type: ignore[union-attr]
    report = site.client.get("/admin/funnels/yoga").get_data(as_text=True)
    api = site.client.get("/api/v1/reports/yoga", headers=site.api_headers).json
    assert api["spend"][0]["spend"] == 40.0 and f'{api["spend"][0]["cost_per_lead"]:,.2f}' in report
    assert site.client.post(f"/admin/spend/{entry}", data={"action": "set", "amount": "55.50", "csrf_token": token}).status_code == 302
    assert '<td class="num">55.50</td>' in site.client.get("/admin/spend").get_data(as_text=True)
    assert site.client.post(f"/admin/spend/{entry}", data={"action": "delete", "csrf_token": token}).status_code == 302
    assert "No spend yet" in site.client.get("/admin/spend").get_data(as_text=True)


def test_files_shows_validate_problems_with_file_and_line(site: Site) -> None:
    site.login()
    assert "No errors: 2 flow(s)" in site.client.get("/admin/files").get_data(as_text=True)
    (Path(site.rt.settings.project_dir) / "funnels" / "broken.yml").write_text("funnel: broken\nstages:\n  - stage: a\n    steps:\n      - sned: x\n")
    page = text_of(site.client.get("/admin/files").get_data(as_text=True))
    assert "funnels/broken.yml:5" in page and "error(s)" in page
