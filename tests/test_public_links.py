"""The links in real emails: clicks, the open pixel, unsubscribes, offers and countdowns.

Each test sends real emails through the scheduler into a file outbox, reads the
links out of the `.eml`, and requests them on Flask's test client, so what is
tested is what a reader's mail client would fetch.
"""

from __future__ import annotations

import email
import email.policy
import os
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html import unescape
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select

from autofunnel.clock import FixedClock
from autofunnel.mail.countdown import draw_countdown, format_remaining
from autofunnel.services.credentials import create_api_key
from autofunnel.services.runtime import Runtime
from autofunnel.services.scheduler import run_tick, tick
from autofunnel.services.tracking import BOT_WINDOW, looks_automated, mask_email
from autofunnel.store.models import Event
from autofunnel.web import create_app

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, inside the yoga funnel's send window
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
GUIDE = "https://yoga.example/guide.pdf"
OFFER_LIVE = "https://shop.example/mini?coupon=EARLY"
OFFER_EXPIRED = "https://shop.example/mini"


# Bot rules (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "bot"),
    [
        (BROWSER, False),
        ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", False),
        ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", False),
        ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)", False),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) BingPreview/1.0b", True),
        ("Barracuda Sentinel (EE)", True),
        ("Mozilla/5.0 (compatible; Proofpoint URL Defense)", True),
        ("Mimecast Url Protect", True),
        ("python-requests/2.32.3", True),
        ("curl/8.5.0", True),
        ("Go-http-client/1.1", True),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0 Safari/537.36", True),
        ("", True),
        (None, True),
    ],
)
def test_bot_rules_by_user_agent(agent: str | None, bot: bool) -> None:
    sent = START - timedelta(hours=1)
    assert looks_automated(agent, sent, START) is bot


def test_bot_rules_by_time_since_delivery() -> None:
    sent = START
    assert looks_automated(BROWSER, sent, sent) is True
    assert looks_automated(BROWSER, sent, sent + BOT_WINDOW - timedelta(milliseconds=1)) is True
    assert looks_automated(BROWSER, sent, sent + BOT_WINDOW) is False
    assert looks_automated(BROWSER, sent, sent - timedelta(seconds=5)) is True  # before the send: clock skew, a scanner
    assert looks_automated(BROWSER, None, sent) is False  # send time unknown: judged by the agent alone
    assert looks_automated(BROWSER, sent, sent + timedelta(days=1), method="HEAD") is True


def test_masking_and_countdown_text() -> None:
    assert mask_email("anna@example.com") == "a***@example.com"
    assert mask_email("x@example.com") == "x***@example.com"
    assert format_remaining(timedelta(days=2, hours=14, minutes=5, seconds=9, microseconds=900)) == "2d 14h 05m 09s"
    assert format_remaining(timedelta(days=1, seconds=4)) == "1d 00h 00m 04s"
    assert format_remaining(timedelta(hours=5, minutes=12, seconds=44)) == "5h 12m 44s"
    assert format_remaining(timedelta(seconds=30)) == "0m 30s"
    assert format_remaining(timedelta(seconds=-3)) == "0m 00s"


def _frames(data: bytes) -> list[Image.Image]:
    image = Image.open(BytesIO(data))
    frames = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frames.append(image.convert("RGB"))
    return frames


def test_the_countdown_counts_down_a_minute_then_holds_and_ends_on_expired() -> None:
    data = draw_countdown(timedelta(days=2, hours=14, minutes=5, seconds=9))
    image = Image.open(BytesIO(data))
    assert image.format == "GIF" and image.size == (600, 140)  # drawn at 2x, shown at 300x70
    assert "loop" not in image.info  # no NETSCAPE2.0 loop: played once, the last frame stays
    frames = _frames(data)
    assert len(frames) == 60
    assert all(a.tobytes() != b.tobytes() for a, b in zip(frames, frames[1:]))  # a new time each second
    assert [Image.open(BytesIO(data)).info["duration"]] == [1000]
    assert draw_countdown(timedelta(days=2, hours=14, minutes=5, seconds=9, milliseconds=700)) is data  # cached per second

    expired = draw_countdown(timedelta(seconds=-1))
    assert len(_frames(expired)) == 1 and expired == draw_countdown(timedelta(0))
    ending = _frames(draw_countdown(timedelta(seconds=30)))
    assert len(ending) == 31  # 30 s counted, then the expired frame held
    assert ending[-1].tobytes() == _frames(expired)[0].tobytes()
    not_started = _frames(draw_countdown(None))
    assert len(not_started) == 1 and not_started[0].tobytes() != _frames(expired)[0].tobytes()


# The app over a real database -------------------------------------------------------


@dataclass
class Web:
    app: Flask
    client: FlaskClient
    rt: Runtime
    clock: FixedClock
    outbox: Path
    headers: dict[str, str]

    def api(self, path: str, body: Any) -> Any:
        response = self.client.post(path, json=body, headers=self.headers)
        assert response.status_code in (200, 201, 202), response.json
        return response.json

    def written(self) -> None:
        """What a web process writes of its gathered opens and clicks within a second (services/write_behind.py), now."""
        self.rt.engagements.flush()

    def lead(self, key: str | int = "anna@example.com") -> dict[str, Any]:
        self.written()
        response = self.client.get(f"/api/v1/leads/{key}", headers=self.headers)
        assert response.status_code == 200, response.json
        return response.json

    def delivery(self, step: str) -> dict[str, Any]:
        (found,) = [d for d in self.lead()["deliveries"] if d["step"] == step]
        return found

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.lead()["events"] if e["type"] == kind]

    def event_count(self) -> int:
        self.written()
        with self.rt.db.read() as session:
            return session.scalar(select(func.count()).select_from(Event)) or 0

    def email(self, subject_part: str) -> EmailMessage:
        found = []
        for path in sorted(self.outbox.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            if subject_part in str(message["Subject"]):
                found.append(message)
        assert len(found) == 1, [p.name for p in self.outbox.glob("*.eml")]
        return found[0]

    def now(self) -> str:
        return self.clock.now().isoformat().replace("+00:00", "Z")


@pytest.fixture
def web(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> Web:
    """The example project, a migrated database, a fixed clock, an API key, the app, a file outbox."""
    outbox = tmp_path / "outbox"
    clock = FixedClock(START)
    broker = {"broker_url": os.environ["AUTOFUNNEL_TEST_BROKER_URL"]} if os.environ.get("AUTOFUNNEL_TEST_BROKER_URL") else {}
    rt = runtime_factory(project_dir, f"file://{outbox}", clock, **broker)
    rt.rng = random.Random(0)  # its first draws are all above 0.1: the lead is not in the yoga holdout
    _, key = create_api_key(rt.db, clock, "shop")
    app = create_app(runtime=rt)
    return Web(app, app.test_client(), rt, clock, outbox, {"Authorization": f"Bearer {key}"})


def links(message: EmailMessage) -> dict[str, Any]:
    """The tracked links, the pixel, the countdown and the List-Unsubscribe URL, as paths."""
    part = message.get_body(("html",))
    assert part is not None
    html = part.get_content()
    urls = [unescape(u) for u in re.findall(r'(?:href|src)="([^"]+)"', html)]
    header = re.search(r"<(http[^>]+)>", str(message["List-Unsubscribe"]))
    assert header is not None
    paths = [urlsplit(u).path for u in urls if u.startswith("http://testserver/")]
    return {
        "clicks": [p for p in paths if p.startswith("/t/c/")],
        "pixel": next(p for p in paths if p.startswith("/t/o/")),
        "countdowns": [p for p in paths if p.startswith("/countdown/")],
        "unsubscribe": urlsplit(header.group(1)).path,
        "footer_unsubscribe": [p for p in paths if p.startswith("/u/")],
    }


@pytest.fixture
def welcome(web: Web) -> dict[str, Any]:
    """Anna subscribed, confirmed, and got the welcome email (sent at START)."""
    lead = web.api("/api/v1/subscribe", {"email": "anna@example.com", "funnel": "yoga", "first_name": "Anna"})
    web.api("/api/v1/events", {"type": "confirmed", "lead_id": lead["lead_id"]})
    run_tick(web.rt)
    assert web.delivery("welcome")["status"] == "sent"
    assert web.delivery("welcome")["sent_at"] == web.now()
    return links(web.email("your yoga guide is inside"))


@pytest.fixture
def offer_email(web: Web, welcome: dict[str, Any]) -> dict[str, Any]:
    """A day later: the tripwire-offer email, which starts the 48-hour `tripwire` deadline."""
    web.clock.advance(timedelta(days=1))
    run_tick(web.rt)
    assert web.delivery("tripwire-offer")["status"] == "sent"
    return links(web.email("ready for your first week"))


# Clicks and opens -------------------------------------------------------------------


def test_a_click_redirects_to_the_signed_url_and_is_recorded(web: Web, welcome: dict[str, Any]) -> None:
    (click,) = welcome["clicks"]
    assert welcome["footer_unsubscribe"] == [welcome["unsubscribe"]]  # the unsubscribe link is not wrapped
    web.clock.advance(timedelta(minutes=3))

    response = web.client.get(click + "?next=https://evil.example/", headers={"User-Agent": BROWSER})
    assert response.status_code == 302
    assert response.headers["Location"] == GUIDE
    assert response.headers["Cache-Control"] == "no-store"

    welcome_delivery = web.delivery("welcome")
    assert welcome_delivery["clicked_at"] == web.now()
    assert welcome_delivery["opened_at"] == web.now()  # a click implies the open
    (event,) = web.events("clicked")
    delivery_id = welcome_delivery["id"]
    assert event["properties"] == {"delivery": delivery_id, "flow": "yoga", "step": "welcome", "bot": False, "url": GUIDE}

    first = web.now()
    web.clock.advance(timedelta(hours=1))
    assert web.client.get(click, headers={"User-Agent": BROWSER}).status_code == 302
    assert web.delivery("welcome")["clicked_at"] == first  # the first human click stays
    assert len(web.events("clicked")) == 2


def test_clicks_by_machines_are_recorded_as_bots_and_set_nothing(web: Web, welcome: dict[str, Any]) -> None:
    (click,) = welcome["clicks"]
    on_delivery = web.client.get(click, headers={"User-Agent": BROWSER})  # the same second the email went out
    assert on_delivery.status_code == 302 and on_delivery.headers["Location"] == GUIDE

    web.clock.advance(timedelta(minutes=5))
    scanner = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) BingPreview/1.0b"
    assert web.client.get(click, headers={"User-Agent": scanner}).headers["Location"] == GUIDE
    assert web.client.head(click, headers={"User-Agent": BROWSER}).status_code == 302

    clicks = web.events("clicked")
    assert len(clicks) == 3 and all(e["properties"]["bot"] is True for e in clicks)
    delivery = web.delivery("welcome")
    assert delivery["clicked_at"] is None and delivery["opened_at"] is None


def test_the_open_pixel_records_opens(web: Web, welcome: dict[str, Any]) -> None:
    pixel = welcome["pixel"]
    early = web.client.get(pixel, headers={"User-Agent": BROWSER})
    assert early.status_code == 200
    assert early.mimetype == "image/gif" and early.headers["Cache-Control"] == "no-store"
    image = Image.open(BytesIO(early.data))
    assert image.format == "GIF" and image.size == (1, 1)
    assert web.delivery("welcome")["opened_at"] is None

    web.clock.advance(BOT_WINDOW + timedelta(seconds=1))
    gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    assert web.client.get(pixel, headers={"User-Agent": gmail}).status_code == 200
    opened_at = web.now()
    web.clock.advance(timedelta(hours=2))
    assert web.client.get(pixel, headers={"User-Agent": BROWSER}).status_code == 200

    delivery = web.delivery("welcome")
    assert delivery["opened_at"] == opened_at and delivery["clicked_at"] is None
    assert [e["properties"]["bot"] for e in sorted(web.events("opened"), key=lambda e: e["at"])] == [True, False, False]
    assert web.events("opened")[0]["properties"]["step"] == "welcome"


def test_gathered_opens_and_clicks_count_by_when_they_were_fetched_not_when_written(web: Web, welcome: dict[str, Any]) -> None:
    web.rt.engagements.interval = 3600  # the web process's background writer stays asleep: only this test writes
    web.clock.advance(timedelta(seconds=5))
    assert web.client.get(welcome["pixel"], headers={"User-Agent": BROWSER}).status_code == 200  # within seconds of delivery: a scanner
    web.clock.advance(timedelta(minutes=3))
    fetched = web.now()
    assert web.client.get(welcome["pixel"], headers={"User-Agent": BROWSER}).status_code == 200
    assert web.client.head(welcome["clicks"][0], headers={"User-Agent": BROWSER}).status_code == 302  # a HEAD: a link checker
    web.clock.advance(timedelta(minutes=1))
    clicked = web.now()
    assert web.client.get(welcome["clicks"][0], headers={"User-Agent": BROWSER}).status_code == 302
    with web.rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Event).where(Event.type.in_(("opened", "clicked")))) == 0
    assert web.rt.engagements.pending() == 4

    web.clock.advance(timedelta(hours=1))  # written an hour later: counted as of their fetch
    opens = sorted(web.events("opened"), key=lambda e: e["at"])
    assert [(e["at"], e["properties"]["bot"]) for e in opens] == [(opens[0]["at"], True), (fetched, False)]
    assert [(e["at"], e["properties"]["bot"]) for e in sorted(web.events("clicked"), key=lambda e: e["at"])] == [(fetched, True), (clicked, False)]
    delivery = web.delivery("welcome")
    assert (delivery["opened_at"], delivery["clicked_at"]) == (fetched, clicked)
    assert web.rt.engagements.pending() == 0


def test_a_click_goes_exactly_where_its_token_says(web: Web, welcome: dict[str, Any]) -> None:
    delivery_id = web.delivery("welcome")["id"]
    web.clock.advance(timedelta(minutes=1))
    for url in ["https://shop.example/a?x=1&y=%20z#top", "http://shop.example/", "https://shop.example/p?q=a+b&r=%C3%A9"]:
        token = web.rt.tokens.sign("click", [delivery_id, url])
        assert web.client.get(f"/t/c/{token}", headers={"User-Agent": BROWSER}).headers["Location"] == url
    token = web.rt.tokens.sign("click", [delivery_id, "https://shop.example/café?ü=1"])
    assert web.client.get(f"/t/c/{token}").headers["Location"] == "https://shop.example/caf%C3%A9?%C3%BC=1"  # same URL, header-safe
    before = web.event_count()
    for url in ["javascript:alert(1)", "//evil.example/", "https://shop.example/\r\nSet-Cookie: x=1", "data:text/html,hi"]:
        token = web.rt.tokens.sign("click", [delivery_id, url])
        assert web.client.get(f"/t/c/{token}").status_code == 404, url
    gone = web.rt.tokens.sign("click", [delivery_id + 1000, GUIDE])  # a delivery the database does not have
    assert web.client.get(f"/t/c/{gone}", headers={"User-Agent": BROWSER}).headers["Location"] == GUIDE
    assert web.event_count() == before


def _tampered(path: str) -> str:
    last = path[-1]
    return path[:-1] + ("A" if last != "A" else "B")


def test_bad_tokens_are_404_pages_and_record_nothing(web: Web, welcome: dict[str, Any], offer_email: dict[str, Any]) -> None:
    (click,) = welcome["clicks"]
    click_token = click.rsplit("/", 1)[1]
    unsubscribe_token = welcome["unsubscribe"].rsplit("/", 1)[1]
    before = web.event_count()
    countdown = offer_email["countdowns"][0]
    for method, path in [
        ("get", _tampered(click)),
        ("get", _tampered(welcome["pixel"])),
        ("get", _tampered(welcome["unsubscribe"])),
        ("post", _tampered(welcome["unsubscribe"])),
        ("get", countdown[: -len(".gif")] + "x.gif"),
        ("get", f"/t/o/{click_token}"),          # a click token used as an open
        ("get", f"/o/{click_token}"),
        ("post", f"/u/{click_token}"),           # a click token used to unsubscribe
        ("get", f"/t/c/{unsubscribe_token}"),
        ("get", "/t/c/not-a-token"),
        ("get", "/countdown/%00.gif"),
    ]:
        response = getattr(web.client, method)(path, headers={"User-Agent": BROWSER})
        assert response.status_code == 404, (method, path)
        assert response.mimetype == "text/html"
        assert "Link not found" in response.get_data(as_text=True)
    assert web.event_count() == before
    assert web.lead()["status"] == "active"


# Unsubscribing ----------------------------------------------------------------------


def test_the_unsubscribe_page_changes_nothing_and_the_post_unsubscribes(web: Web, welcome: dict[str, Any]) -> None:
    path = welcome["unsubscribe"]
    page = web.client.get(path, headers={"User-Agent": BROWSER})
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "a***@example.com" in html and "anna@example.com" not in html
    assert f'<form method="post" action="{path}"' in html
    assert "http://" not in html and "https://" not in html  # no external assets
    assert web.client.head(path).status_code == 200
    assert web.lead()["status"] == "active" and web.events("unsubscribed") == []

    web.clock.advance(timedelta(days=1))
    queued = tick(web.rt).queued  # the tripwire offer is queued, not sent yet
    assert len(queued) == 1 and web.delivery("tripwire-offer")["status"] == "queued"

    done = web.client.post(path)
    assert done.status_code == 200 and done.mimetype == "text/html"
    assert "You are unsubscribed" in done.get_data(as_text=True)
    lead = web.lead()
    assert lead["status"] == "unsubscribed"
    assert web.delivery("tripwire-offer")["status"] == "skipped"
    assert "lead unsubscribed" in web.delivery("tripwire-offer")["reason"]
    (event,) = web.events("unsubscribed")
    assert event["properties"] == {"delivery": web.delivery("welcome")["id"], "via": "link"}

    assert web.client.post(path).status_code == 200  # a second POST is fine, and records nothing more
    assert len(web.events("unsubscribed")) == 1
    assert "You are unsubscribed" in web.client.get(path).get_data(as_text=True)


def test_one_click_unsubscribe_answers_plain_text(web: Web, welcome: dict[str, Any]) -> None:
    response = web.client.post(welcome["unsubscribe"], data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "<" not in response.get_data(as_text=True)
    assert web.lead()["status"] == "unsubscribed"
    assert web.events("unsubscribed")[0]["properties"]["via"] == "one-click"


# Offers and countdowns --------------------------------------------------------------


def test_the_offer_link_honours_the_deadline(web: Web, offer_email: dict[str, Any]) -> None:
    (wrapped,) = offer_email["clicks"]  # the offer link, wrapped in click tracking
    web.clock.advance(timedelta(minutes=10))
    click = web.client.get(wrapped, headers={"User-Agent": BROWSER})
    assert click.status_code == 302
    offer = urlsplit(click.headers["Location"])
    assert (offer.scheme, offer.netloc) == ("http", "testserver") and offer.path.startswith("/o/")

    live = web.client.get(offer.path)
    assert live.status_code == 302 and live.headers["Location"] == OFFER_LIVE
    assert live.headers["Cache-Control"] == "no-store"
    (deadline,) = [d for d in web.lead()["deadlines"] if d["name"] == "tripwire"]
    assert deadline["at"] == (START + timedelta(days=1, hours=48)).isoformat().replace("+00:00", "Z")

    web.clock.advance(timedelta(hours=48))
    assert web.client.get(offer.path).headers["Location"] == OFFER_EXPIRED


def test_an_offer_edited_away_is_404(web: Web, offer_email: dict[str, Any]) -> None:
    lead_id = web.lead()["id"]
    gone = web.rt.tokens.sign("offer", [lead_id, "yoga", "mega-course", 1])
    assert web.client.get(f"/o/{gone}").status_code == 404
    no_funnel = web.rt.tokens.sign("offer", [lead_id, "pilates", "mini-course", 1])
    assert web.client.get(f"/o/{no_funnel}").status_code == 404
    never_started = web.rt.tokens.sign("offer", [lead_id + 100, "yoga", "mini-course", 1])
    assert web.client.get(f"/o/{never_started}").headers["Location"] == OFFER_LIVE


def test_the_countdown_shows_the_time_left_then_expired(web: Web, offer_email: dict[str, Any]) -> None:
    (countdown,) = offer_email["countdowns"]
    assert countdown.endswith(".gif")
    before = web.client.get(countdown)
    assert before.status_code == 200 and before.mimetype == "image/gif"
    assert before.headers["Cache-Control"] == "no-store"
    image = Image.open(BytesIO(before.data))
    assert image.format == "GIF" and image.size == (600, 140)
    assert getattr(image, "n_frames", 1) == 60
    assert before.data == draw_countdown(timedelta(hours=48))  # "2d 00h 00m 00s", counting down

    web.clock.advance(timedelta(hours=48, seconds=1))
    after = web.client.get(countdown)
    assert after.status_code == 200
    assert Image.open(BytesIO(after.data)).format == "GIF"
    assert after.data != before.data
    assert after.data == draw_countdown(timedelta(0))  # "Offer expired", one frame
