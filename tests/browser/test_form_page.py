"""The hosted subscribe form in a real Chromium with JavaScript off, over a live server:
it fits a phone without sideways scrolling, hides the honeypot, and subscribes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright
from smtp_sink import SmtpSink
from werkzeug.serving import make_server

from autofunnel.clock import SystemClock
from autofunnel.services.leads import lead_view
from autofunnel.web import create_app
from autofunnel.web.limits import limiter

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def live(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink) -> Iterator[tuple[str, Any]]:
    rt = runtime_factory(project_dir, smtp_sink.url(), SystemClock())
    app = create_app(runtime=rt)
    limiter.reset()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", rt
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield chromium
        chromium.close()


@pytest.mark.parametrize("width", [390, 1280])
def test_the_form_fits_and_subscribes_without_javascript(live: tuple[str, Any], browser: Any, width: int, tmp_path: Path) -> None:
    base, rt = live
    context = browser.new_context(viewport={"width": width, "height": 800}, java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{base}/f/yoga?utm_source=insta")
    assert page.locator("h1").inner_text() == "Yoga for beginners"
    context_js = browser.new_context(viewport={"width": width, "height": 800})
    measured = context_js.new_page()
    measured.goto(f"{base}/f/yoga")
    assert measured.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
    honeypot = measured.locator("#website").bounding_box()
    assert honeypot is not None and honeypot["x"] < 0  # off-screen for people
    button = measured.locator("button[type=submit]").bounding_box()
    assert button is not None and button["x"] >= 0 and button["x"] + button["width"] <= width
    context_js.close()

    page.fill("#email", f"reader{width}@example.com")
    page.fill("#first_name", "Rea")
    page.check("input[name=consent]")
    page.click("button[type=submit]")
    assert "Check your inbox" in page.content()
    page.screenshot(path=str(tmp_path / f"form-{width}.png"))
    context.close()
    lead = lead_view(rt, f"reader{width}@example.com")
    assert lead["status"] == "pending" and lead["source"] == {"utm_source": "insta"}
