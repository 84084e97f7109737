"""The admin driven as a seller would, in Debian's Chromium through Playwright.

The app runs on a real HTTP server on loopback over this run's database. Every
page visited is also saved as a screenshot at 1280 and 390 px wide, in
`tests/browser/screenshots/` (or AUTOFUNNEL_SCREENSHOT_DIR), for a person to look at.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from werkzeug.serving import make_server

from admin_site import ADMIN_EMAIL, ADMIN_PASSWORD, CHANNELS, Site, build_site

pytestmark = pytest.mark.db

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(os.environ.get("AUTOFUNNEL_SCREENSHOT_DIR", Path(__file__).parent / "screenshots"))


@pytest.fixture
def site(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> Site:
    return build_site(project_dir, runtime_factory, tmp_path / "outbox")


@pytest.fixture
def base_url(site: Site) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, site.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def logged_in(browser: Browser, base_url: str, width: int) -> Page:
    page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    page.goto(f"{base_url}/admin/")
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Funnels")
    return page


def shot(page: Page, name: str) -> None:
    """Save the page and check nothing scrolls sideways at this width."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"] if page.viewport_size else 0
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} scrolls sideways at {width} px"


def test_a_seller_walks_through_the_admin(browser: Browser, base_url: str, site: Site) -> None:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{base_url}/admin/")
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", "wrong password")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("Wrong email or password")

    page.fill("#password", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Funnels")

    page.click("text=Yoga for beginners")
    report = site.api_get("/api/v1/reports/yoga")
    for stage in report["stages"]:
        expect(page.locator(f'.funnel-chart li[data-stage="{stage["stage"]}"] .reached').first).to_have_text(str(stage["reached"]))

    page.select_option("#by", "channel")
    page.click("form.controls button")
    expect(page.locator(".small-funnels .group")).to_have_count(len(CHANNELS))
    expect(page.locator('.group[data-group="instagram"] .reached').first).to_have_text(str(CHANNELS["instagram"]))

    page.click("text=flow map")
    expect(page.locator('[data-step="welcome"]')).to_contain_text("sent")
    waiting = page.locator("a.waiting").first
    count = int(waiting.inner_text().split()[0])
    waiting.click()
    expect(page.locator(".leads-table tbody tr")).to_have_count(count)

    page.locator(".leads-table a").first.click()
    expect(page.locator(".timeline li").first).to_be_visible()
    expect(page.locator(".timeline")).to_contain_text("entered stage")

    page.click("nav >> text=Preview")
    page.select_option("#flow", "yoga")
    page.click("form.controls button")
    expect(page.locator("#template option[value=welcome], #template option:text-is('welcome')")).to_have_count(1)
    page.select_option("#template", "welcome")
    page.click("form.controls button")
    expect(page.locator(".subject")).to_contain_text("yoga guide")
    expect(page.frame_locator("iframe.desktop").locator("body")).to_contain_text("Hi Ann")

    page.click("nav >> text=Ad spend")
    page.fill("#channel", "instagram")
    page.fill("#amount", "120")
    page.click("form.controls button")
    expect(page.locator(".flash")).to_contain_text("120.00 EUR")
    expect(page.locator(".spend-list")).to_contain_text("instagram")

    page.evaluate("document.querySelector('form.controls input[name=csrf_token]').remove()")
    page.fill("#channel", "google")
    page.fill("#amount", "5")
    page.click("form.controls button")
    expect(page.locator("body")).to_contain_text("CSRF")
    page.goto(f"{base_url}/admin/spend")
    expect(page.locator(".spend-list")).not_to_contain_text("google")

    page.click("text=Log out")
    expect(page.locator("h1")).to_have_text("Log in")
    page.goto(f"{base_url}/admin/leads")
    expect(page.locator("h1")).to_have_text("Log in")


@pytest.mark.parametrize("width", [1280, 390])
def test_screenshots_of_every_page_fit_the_width(browser: Browser, base_url: str, site: Site, width: int) -> None:
    page = logged_in(browser, base_url, width)
    lead = site.api_get("/api/v1/leads/instagram0@example.com")["id"]
    for name, path in (
        ("home", "/admin/"),
        ("funnel", "/admin/funnels/yoga"),
        ("funnel-by-channel", "/admin/funnels/yoga?by=channel&interval=day"),
        ("flow-map", "/admin/flows/yoga"),
        ("leads", "/admin/leads"),
        ("lead", f"/admin/leads/{lead}"),
        ("preview", f"/admin/preview?flow=yoga&template=tripwire-offer&lead={lead}"),
        ("spend", "/admin/spend"),
        ("files", "/admin/files"),
    ):
        page.goto(base_url + path)
        expect(page.locator("h1")).to_be_visible()
        shot(page, name)
