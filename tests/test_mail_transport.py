"""Sending: the whole pipeline over real SMTP (aiosmtpd on loopback), errors, files, memory."""

from __future__ import annotations

import email
import email.policy
import re
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from smtp_sink import SmtpSink

from autofunnel.errors import AutofunnelError, ConfigError
from autofunnel.mail.links import add_open_pixel, rewrite_links
from autofunnel.mail.message import build_message, format_address, message_id_for
from autofunnel.mail.render import Renderer
from autofunnel.mail.transport import (
    DeliveryError,
    FileTransport,
    InMemoryTransport,
    PermanentDeliveryError,
    Session,
    SmtpTransport,
    Transport,
    TransientDeliveryError,
    transport_from_url,
)
from autofunnel.tokens import Tokens

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
BASE_URL = "https://go.yoga.example"
SENDER = "Anna from Yoga <anna@yoga.example>"
BOUNCES = "bounces@yoga.example"
NOW = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
DEADLINE = datetime(2026, 3, 5, 8, 0, tzinfo=UTC)


def simple_message(recipient: str, number: int = 1) -> bytes:
    return build_message(
        sender=SENDER, to=recipient, subject=f"Message {number}", html=f"<p>Hello {number}</p>", text=f"Hello {number}\n",
        message_id=message_id_for(number, "yoga.example"), date=NOW, domain="yoga.example",
    )


# The pipeline, as the delivery service composes it -------------------------------------------------


class Pipeline:
    """render → rewrite_links → add_open_pixel → build_message, with signed links for one delivery."""

    def __init__(self) -> None:
        self.tokens = Tokens(["0123456789abcdef-current-key", "0123456789abcdef-older-key"])
        self.renderer = Renderer(TEMPLATES)

    def context(self, delivery_id: int, first_name: str) -> dict[str, Any]:
        sign = self.tokens.sign
        return {
            "lead": {
                "email": "zoe@example.com", "first_name": first_name, "fields": {"segment": "beginner"},
                "tags": ["yoga"], "timezone": "Europe/Paris",
            },
            "funnel": {"slug": "yoga", "title": "Yoga for beginners"},
            "event": {
                "items": [{"name": "Cork yoga mat", "quantity": 1, "price": 39.0}], "value": 39.0, "currency": "EUR",
                "checkout_url": "https://shop.example/checkout?cart=c-9&step=pay",
            },
            "deadline": lambda name: DEADLINE,
            "offer_url": lambda name: f"{BASE_URL}/o/{sign('offer', [delivery_id, name])}",
            "countdown_url": lambda name: f"{BASE_URL}/countdown/{sign('countdown', [delivery_id, name])}.gif",
            "unsubscribe_url": self.unsubscribe_url(delivery_id),
            "postal_address": "Anna Yoga, 1 rue de la Paix, 75002 Paris",
        }

    def unsubscribe_url(self, delivery_id: int) -> str:
        return f"{BASE_URL}/u/{self.tokens.sign('unsubscribe', [delivery_id])}"

    def message(self, folder: str, name: str, delivery_id: int, first_name: str = "Zoë") -> bytes:
        rendered = self.renderer.render(folder, name, self.context(delivery_id, first_name))
        unsubscribe = self.unsubscribe_url(delivery_id)
        html = rewrite_links(
            rendered.html,
            lambda url: f"{BASE_URL}/t/c/{self.tokens.sign('click', [delivery_id, url])}",
            keep={unsubscribe},
        )
        html = add_open_pixel(html, f"{BASE_URL}/t/o/{self.tokens.sign('open', [delivery_id])}")
        return build_message(
            sender=SENDER,
            to=format_address(first_name, "zoe@example.com"),
            subject=rendered.subject,
            html=html,
            text=rendered.text,
            message_id=message_id_for(delivery_id, "yoga.example"),
            date=NOW,
            headers={
                "List-Unsubscribe": f"<{unsubscribe}>, <mailto:unsubscribe@yoga.example?subject=unsubscribe-d{delivery_id}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            domain="yoga.example",
        )


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))
        elif tag == "img":
            self.images.append(dict(attrs))


def tags_of(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline()


@pytest.mark.parametrize(
    "folder, name, subject",
    [
        ("yoga", "welcome", "Zoë, your yoga guide is inside"),
        ("yoga", "tripwire-offer", "Zoë, ready for your first week of yoga?"),
        ("abandoned-cart", "cart-1", "Zoë, you left something in your cart"),
    ],
)
def test_starter_emails_arrive_over_smtp_as_rendered(
    pipeline: Pipeline, smtp_sink: SmtpSink, folder: str, name: str, subject: str  # noqa: F811
) -> None:
    delivery_id = 4711
    raw = pipeline.message(folder, name, delivery_id)
    transport = transport_from_url(smtp_sink.url(), Path("."))
    with transport.session() as session:
        session.send(BOUNCES, "zoe@example.com", raw)

    [received] = smtp_sink.messages
    assert received.envelope_from == BOUNCES
    assert received.recipients == ("zoe@example.com",)
    assert received.raw == raw  # byte for byte, dot-stuffing undone
    message = email.message_from_bytes(received.raw, policy=email.policy.strict)
    assert isinstance(message, email.message.EmailMessage)
    assert all(part.defects == [] for part in message.walk())

    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "Anna from Yoga"
    assert message["From"].addresses[0].addr_spec == "anna@yoga.example"
    assert message["To"].addresses[0].display_name == "Zoë"
    assert message["To"].addresses[0].addr_spec == "zoe@example.com"
    assert message["Message-ID"] == "<d4711.autofunnel@yoga.example>"
    unsubscribe = pipeline.unsubscribe_url(delivery_id)
    assert message["List-Unsubscribe"] == f"<{unsubscribe}>, <mailto:unsubscribe@yoga.example?subject=unsubscribe-d4711>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert pipeline.tokens.load("unsubscribe", unsubscribe.rsplit("/", 1)[1]) == [delivery_id]

    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None and html_part is not None
    text = text_part.get_content()
    html = html_part.get_content()

    # CSS inlined: the layout's `.content p` rule is now on every paragraph of the content
    assert "<style" not in html
    assert re.search(r'<p style="[^"]*margin: 0 0 16px 0', html)
    assert re.search(r'<td class="content" style="[^"]*font-family: Georgia', html)

    # text part: paragraphs and the links' URLs (original, not tracked)
    assert "Hi Zoë," in text
    flowing = " ".join(text.split())  # the text part is wrapped at 78 characters, the URL kept whole
    assert f"Unsubscribe ({unsubscribe})" in flowing or f"Unsubscribe: {unsubscribe}" in flowing
    assert "Anna Yoga, 1 rue de la Paix, 75002 Paris" in text
    assert "<p" not in text

    tags = tags_of(html)
    # the open pixel, last, with a token naming this delivery
    pixel = tags.images[-1]
    assert pixel["width"] == "1" and pixel["height"] == "1"
    assert pixel["src"] is not None and pixel["src"].startswith(f"{BASE_URL}/t/o/")
    assert pipeline.tokens.load("open", pixel["src"].rsplit("/", 1)[1]) == [delivery_id]
    # every http link is a signed click link to its original URL, except the unsubscribe link
    targets = []
    for anchor in tags.anchors:
        href = anchor["href"]
        assert href is not None
        if href == unsubscribe:
            continue
        assert href.startswith(f"{BASE_URL}/t/c/"), href
        signed_delivery, target = pipeline.tokens.load("click", href.rsplit("/", 1)[1])
        assert signed_delivery == delivery_id
        targets.append(target)
    assert [anchor["href"] for anchor in tags.anchors].count(unsubscribe) == 1
    assert targets, "the email has links to track"

    if name == "tripwire-offer":
        [offer] = targets
        assert offer.startswith(f"{BASE_URL}/o/")
        assert pipeline.tokens.load("offer", offer.rsplit("/", 1)[1]) == [delivery_id, "mini-course"]
        assert f"Start the mini-course ({offer})" in " ".join(text.split())
        countdown = [image["src"] for image in tags.images if image["src"] and "/countdown/" in image["src"]]
        assert len(countdown) == 1
    if name == "cart-1":
        assert targets == ["https://shop.example/checkout?cart=c-9&step=pay"]
        assert "Complete your order (https://shop.example/checkout?cart=c-9&step=pay)" in text
        assert "1 × Cork yoga mat | 39.00 EUR" in text
    if name == "welcome":
        assert targets == ["https://yoga.example/guide.pdf"]
        assert "Download your free guide:\nhttps://yoga.example/guide.pdf" in text.replace("\r\n", "\n")


# One connection per batch ---------------------------------------------------------------------------


@pytest.fixture
def smtp_sink(either_smtp_sink: SmtpSink) -> SmtpSink:
    """Every SMTP test here runs against a server without PIPELINING and one with it."""
    return either_smtp_sink


def test_a_batch_of_fifty_uses_one_connection(smtp_sink: SmtpSink) -> None:  # noqa: F811
    transport = transport_from_url(smtp_sink.url(), Path("."))
    with transport.session() as session:
        for number in range(50):
            session.send(BOUNCES, f"lead{number}@example.com", simple_message(f"lead{number}@example.com", number))
        assert isinstance(session, Session)
    assert len(smtp_sink.messages) == 50
    assert smtp_sink.connections == 1
    assert [m.recipients for m in smtp_sink.messages] == [(f"lead{n}@example.com",) for n in range(50)]
    assert [m.message["Subject"] for m in smtp_sink.messages] == [f"Message {n}" for n in range(50)]


def test_an_empty_batch_opens_no_connection(smtp_sink: SmtpSink) -> None:  # noqa: F811
    with transport_from_url(smtp_sink.url(), Path(".")).session():
        pass
    assert smtp_sink.connections == 0


def test_each_batch_gets_its_own_connection(smtp_sink: SmtpSink) -> None:  # noqa: F811
    transport = transport_from_url(smtp_sink.url(), Path("."))
    for batch in range(3):
        with transport.session() as session:
            session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com", batch))
    assert smtp_sink.connections == 3
    assert len(smtp_sink.messages) == 3


# Error classification -----------------------------------------------------------------------------------


def send_one(sink: SmtpSink, recipient: str) -> DeliveryError:
    transport = transport_from_url(sink.url(), Path("."))
    with transport.session() as session, pytest.raises(DeliveryError) as caught:
        session.send(BOUNCES, recipient, simple_message(recipient))
    return caught.value


@pytest.mark.parametrize("code", [550, 551, 553])
def test_a_recipient_refused_for_good_is_a_hard_bounce(smtp_sink: SmtpSink, code: int) -> None:  # noqa: F811
    smtp_sink.answer("bounce@example.com", code, "5.1.1 <bounce@example.com>: Recipient address rejected")
    error = send_one(smtp_sink, "bounce@example.com")
    assert isinstance(error, PermanentDeliveryError)
    assert isinstance(error, AutofunnelError)
    assert error.permanent and error.hard_bounce
    assert error.code == code
    assert error.text == "5.1.1 <bounce@example.com>: Recipient address rejected"
    assert error.stage == "rcpt" and error.recipient == "bounce@example.com"
    assert not error.maybe_sent
    assert str(code) in str(error) and "Recipient address rejected" in str(error)


def test_a_full_mailbox_552_is_permanent_but_no_hard_bounce(smtp_sink: SmtpSink) -> None:  # noqa: F811
    smtp_sink.answer("full@example.com", 552, "5.2.2 mailbox full")
    error = send_one(smtp_sink, "full@example.com")
    assert error.permanent and not error.hard_bounce


def test_a_4xx_is_transient(smtp_sink: SmtpSink) -> None:  # noqa: F811
    smtp_sink.answer("later@example.com", 451, "4.7.1 Greylisted, try again later")
    error = send_one(smtp_sink, "later@example.com")
    assert isinstance(error, TransientDeliveryError)
    assert not error.permanent and not error.hard_bounce
    assert error.code == 451 and error.text == "4.7.1 Greylisted, try again later"


def test_content_refused_after_data_is_permanent_but_not_a_bounce(smtp_sink: SmtpSink) -> None:  # noqa: F811
    smtp_sink.answer("filtered@example.com", 554, "5.7.1 Message rejected as spam", at="data")
    error = send_one(smtp_sink, "filtered@example.com")
    assert error.permanent and not error.hard_bounce
    assert error.code == 554 and error.stage == "data"


def test_errors_do_not_spoil_the_rest_of_the_batch(smtp_sink: SmtpSink) -> None:  # noqa: F811
    smtp_sink.answer("bounce@example.com", 550, "5.1.1 no such user")
    smtp_sink.answer("later@example.com", 451, "4.3.0 try later")
    smtp_sink.answer("spam@example.com", 554, "5.7.1 no", at="data")
    outcomes = []
    with transport_from_url(smtp_sink.url(), Path(".")).session() as session:
        for recipient in ["a@example.com", "bounce@example.com", "b@example.com", "later@example.com", "spam@example.com", "c@example.com"]:
            try:
                session.send(BOUNCES, recipient, simple_message(recipient))
            except DeliveryError as exc:
                outcomes.append((recipient, exc.code))
            else:
                outcomes.append((recipient, 250))
    assert outcomes == [
        ("a@example.com", 250), ("bounce@example.com", 550), ("b@example.com", 250),
        ("later@example.com", 451), ("spam@example.com", 554), ("c@example.com", 250),
    ]
    assert [m.recipients[0] for m in smtp_sink.messages] == ["a@example.com", "b@example.com", "c@example.com"]
    assert smtp_sink.connections == 1


def test_a_connection_dropped_mid_batch_fails_that_message_and_the_next_reconnects(smtp_sink: SmtpSink) -> None:  # noqa: F811
    smtp_sink.drop("dropped@example.com")
    with transport_from_url(smtp_sink.url(), Path(".")).session() as session:
        session.send(BOUNCES, "a@example.com", simple_message("a@example.com"))
        with pytest.raises(TransientDeliveryError) as caught:
            session.send(BOUNCES, "dropped@example.com", simple_message("dropped@example.com"))
        assert caught.value.maybe_sent  # the data went out: at most once means no blind retry
        assert caught.value.stage == "data"
        session.send(BOUNCES, "b@example.com", simple_message("b@example.com"))
    assert [m.recipients[0] for m in smtp_sink.messages] == ["a@example.com", "b@example.com"]
    assert smtp_sink.connections == 2


def test_a_connection_the_server_closed_while_idle_is_reopened_without_an_error(smtp_sink: SmtpSink) -> None:  # noqa: F811
    with transport_from_url(smtp_sink.url(), Path(".")).session() as session:
        session.send(BOUNCES, "a@example.com", simple_message("a@example.com"))
        smtp_sink.close_connections()
        session.send(BOUNCES, "b@example.com", simple_message("b@example.com"))
    assert [m.recipients[0] for m in smtp_sink.messages] == ["a@example.com", "b@example.com"]
    assert smtp_sink.connections == 2


def test_a_421_at_mail_on_a_reused_connection_reconnects_and_sends(smtp_sink: SmtpSink) -> None:  # noqa: F811
    with transport_from_url(smtp_sink.url(), Path(".")).session() as session:
        session.send(BOUNCES, "a@example.com", simple_message("a@example.com"))
        smtp_sink.answer_next_mail_with_421()
        session.send(BOUNCES, "b@example.com", simple_message("b@example.com"))
    assert [m.recipients[0] for m in smtp_sink.messages] == ["a@example.com", "b@example.com"]
    assert smtp_sink.connections == 2


def test_a_server_that_takes_data_after_refusing_the_recipient_gets_no_message(smtp_sink: SmtpSink) -> None:  # noqa: F811
    """With PIPELINING, DATA goes before RCPT's answer is read; should a server answer it with 354
    all the same, the connection is dropped without the message, which no server can deliver."""
    smtp_sink.refuse_but_take_data("bounce@example.com", 550, "5.1.1 no such user")
    with transport_from_url(smtp_sink.url(), Path(".")).session() as session:
        with pytest.raises(PermanentDeliveryError) as caught:
            session.send(BOUNCES, "bounce@example.com", simple_message("bounce@example.com"))
        assert caught.value.hard_bounce and caught.value.stage == "rcpt" and not caught.value.maybe_sent
        session.send(BOUNCES, "a@example.com", simple_message("a@example.com"))
    assert [m.recipients for m in smtp_sink.messages] == [("a@example.com",)]
    assert smtp_sink.connections == (2 if smtp_sink.pipelining else 1)  # without PIPELINING, DATA was never sent


@pytest.mark.parametrize(("code", "hard_bounce"), [(550, True), (421, False)])
def test_a_server_that_refuses_the_recipient_and_hangs_up_gets_its_refusal_kept(smtp_sink: SmtpSink, code: int, hard_bounce: bool) -> None:  # noqa: F811
    """A refusal read before the connection went is the message's error: a 550 still suppresses
    the lead, and neither is taken for an idle connection's close and sent again."""
    smtp_sink.refuse_and_close("gone@example.com", code, "5.1.1 no such user" if code == 550 else "4.7.0 too many errors")
    with transport_from_url(smtp_sink.url(), Path(".")).session() as session:
        session.send(BOUNCES, "a@example.com", simple_message("a@example.com"))
        with pytest.raises(DeliveryError) as caught:
            session.send(BOUNCES, "gone@example.com", simple_message("gone@example.com"))
        assert (caught.value.code, caught.value.stage, caught.value.hard_bounce) == (code, "rcpt", hard_bounce)
        assert not caught.value.maybe_sent
        session.send(BOUNCES, "b@example.com", simple_message("b@example.com"))
    assert [m.recipients[0] for m in smtp_sink.messages] == ["a@example.com", "b@example.com"]
    assert smtp_sink.connections == 2


def test_a_message_with_lines_starting_with_a_dot_arrives_whole(smtp_sink: SmtpSink) -> None:  # noqa: F811
    text = ".a line starting with a dot\n.\n..two dots\nlast line without a newline"
    message = build_message(
        sender=SENDER, to="dot@example.com", subject="Dots", html="<p>dots</p>", text=text,
        message_id=message_id_for(7, "yoga.example"), date=NOW, domain="yoga.example",
    )
    with transport_from_url(smtp_sink.url(), Path(".")).session() as session:
        session.send(BOUNCES, "dot@example.com", message)
    received = smtp_sink.messages[0].message.get_body(("plain",))
    assert received is not None
    assert received.get_content().replace("\r\n", "\n").rstrip("\n") == text


def test_a_421_at_mail_on_a_fresh_connection_is_transient(smtp_sink: SmtpSink) -> None:  # noqa: F811
    smtp_sink.answer_next_mail_with_421()
    error = send_one(smtp_sink, "a@example.com")
    assert isinstance(error, TransientDeliveryError)
    assert error.code == 421 and error.stage == "mail" and not error.maybe_sent
    assert smtp_sink.messages == []


def test_connection_refused_is_transient() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = transport_from_url(f"smtp://127.0.0.1:{port}", Path("."))
    with transport.session() as session, pytest.raises(TransientDeliveryError) as caught:
        session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com"))
    assert caught.value.stage == "connect" and not caught.value.maybe_sent


def test_a_server_that_never_answers_times_out_as_transient() -> None:
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts the TCP connection, never says a word
        port = silent.getsockname()[1]
        transport = transport_from_url(f"smtp://127.0.0.1:{port}?timeout=0.3", Path("."))
        with transport.session() as session, pytest.raises(TransientDeliveryError, match="timed out"):
            session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com"))


@pytest.mark.parametrize("recipient", ["zoë@example.com", "a@example.com\r\nRCPT TO:<x@evil.example>", "no-at-sign", "a b@example.com", "<a@example.com>"])
def test_envelope_addresses_that_cannot_go_into_smtp_commands_are_refused(smtp_sink: SmtpSink, recipient: str) -> None:  # noqa: F811
    with transport_from_url(smtp_sink.url(), Path(".")).session() as session, pytest.raises(PermanentDeliveryError):
        session.send(BOUNCES, recipient, simple_message("zoe@example.com"))
    assert smtp_sink.connections == 0
    assert smtp_sink.messages == []


# TLS and authentication -------------------------------------------------------------------------------------


@pytest.fixture
def tls_sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    sink = SmtpSink(tls=request.param, users={"anna@yoga.example": "p@ss:w/rd %"})
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.mark.parametrize("tls_sink", ["starttls", "tls"], indirect=True)
def test_tls_with_url_encoded_credentials(tls_sink: SmtpSink) -> None:
    scheme = "smtp+starttls" if tls_sink.tls == "starttls" else "smtps"
    url = f"{scheme}://anna%40yoga.example:p%40ss%3Aw%2Frd%20%25@127.0.0.1:{tls_sink.port}"
    transport = transport_from_url(url, Path("."), ssl_context=tls_sink.client_ssl_context())
    with transport.session() as session:
        for number in range(3):
            session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com", number))
    assert tls_sink.logins == [("anna@yoga.example", "p@ss:w/rd %")]
    assert len(tls_sink.messages) == 3
    assert tls_sink.connections == 1


@pytest.mark.parametrize("tls_sink", ["starttls", "tls"], indirect=True)
def test_an_untrusted_certificate_is_refused(tls_sink: SmtpSink) -> None:
    scheme = "smtp+starttls" if tls_sink.tls == "starttls" else "smtps"
    transport = transport_from_url(f"{scheme}://127.0.0.1:{tls_sink.port}", Path("."))  # the default trust store
    with transport.session() as session, pytest.raises(PermanentDeliveryError, match="certificate") as caught:
        session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com"))
    assert caught.value.stage == "tls" or caught.value.stage == "connect"
    assert tls_sink.messages == []


@pytest.mark.parametrize("tls_sink", ["starttls"], indirect=True)
def test_wrong_credentials_are_a_permanent_auth_error(tls_sink: SmtpSink) -> None:
    url = f"smtp+starttls://anna%40yoga.example:wrong@127.0.0.1:{tls_sink.port}"
    transport = transport_from_url(url, Path("."), ssl_context=tls_sink.client_ssl_context())
    with transport.session() as session, pytest.raises(PermanentDeliveryError) as caught:
        session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com"))
    assert caught.value.stage == "auth" and caught.value.code == 535
    assert not caught.value.hard_bounce


def test_starttls_is_required_never_skipped(smtp_sink: SmtpSink) -> None:  # noqa: F811
    transport = transport_from_url(f"smtp+starttls://127.0.0.1:{smtp_sink.port}", Path("."))
    with transport.session() as session, pytest.raises(PermanentDeliveryError, match="STARTTLS"):
        session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com"))
    assert smtp_sink.messages == []


def test_plain_smtp_with_credentials(tmp_path: Path) -> None:
    with SmtpSink(users={"u": "secret"}) as sink:
        with transport_from_url(f"smtp://u:secret@127.0.0.1:{sink.port}", tmp_path).session() as session:
            session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com"))
        assert sink.logins == [("u", "secret")]
        assert len(sink.messages) == 1


# URLs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, host, port, security, username, password",
    [
        ("smtp://mail.example", "mail.example", 25, "plain", None, None),
        ("smtp://u:p@mail.example:2525", "mail.example", 2525, "plain", "u", "p"),
        ("smtp+starttls://apikey:s%2Fe%40cr%3Aet@smtp.example", "smtp.example", 587, "starttls", "apikey", "s/e@cr:et"),
        ("smtps://user%40example.com:pw@smtp.example", "smtp.example", 465, "tls", "user@example.com", "pw"),
        ("SMTPS://[::1]:4650", "::1", 4650, "tls", None, None),
    ],
)
def test_smtp_urls(url: str, host: str, port: int, security: str, username: str | None, password: str | None) -> None:
    transport = transport_from_url(url, Path("."))
    assert isinstance(transport, SmtpTransport)
    assert isinstance(transport, Transport)
    assert (transport.host, transport.port, transport.security) == (host, port, security)
    assert (transport.username, transport.password) == (username, password)
    assert transport.timeout == 30.0
    assert "password" not in repr(transport)


def test_timeout_and_helo_come_from_the_url_or_the_caller() -> None:
    transport = transport_from_url("smtp://mail.example?timeout=5&helo=worker1.yoga.example", Path("."))
    assert isinstance(transport, SmtpTransport)
    assert transport.timeout == 5.0 and transport.helo == "worker1.yoga.example"
    overridden = transport_from_url("smtp://mail.example?timeout=5", Path("."), timeout=2.5)
    assert isinstance(overridden, SmtpTransport) and overridden.timeout == 2.5


def test_the_default_tls_context_verifies_certificates() -> None:
    transport = transport_from_url("smtps://mail.example", Path("."))
    assert isinstance(transport, SmtpTransport)
    context = transport.tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize(
    "url",
    ["mail.example", "smtpx://mail.example", "smtp://", "smtp://mail.example:port", "smtp://mail.example?timeout=soon", "smtp://mail.example?timeout=0", "file://"],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="AUTOFUNNEL_SMTP_URL"):
        transport_from_url(url, Path("."))


def test_a_bad_url_does_not_show_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        transport_from_url("smtp://user:hunter2@mail.example:notaport", Path("."))
    assert "hunter2" not in str(caught.value)


# Files --------------------------------------------------------------------------------------------------------


def test_file_urls_absolute_and_relative_to_the_project(tmp_path: Path) -> None:
    absolute = transport_from_url(f"file://{tmp_path}/out", Path("/elsewhere"))
    assert isinstance(absolute, FileTransport) and absolute.directory == tmp_path / "out"
    relative = transport_from_url("file://./outbox", tmp_path)
    assert isinstance(relative, FileTransport) and relative.directory == tmp_path / "outbox"
    bare = transport_from_url("file://outbox", tmp_path)
    assert isinstance(bare, FileTransport) and bare.directory == tmp_path / "outbox"


def test_the_file_transport_writes_one_eml_per_message_and_never_overwrites(tmp_path: Path) -> None:
    transport = transport_from_url("file://./outbox", tmp_path)
    with transport.session() as session:
        session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com", 7))
        session.send(BOUNCES, "bob@example.com", simple_message("bob@example.com", 8))
        session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com", 7))  # a re-send
    outbox = tmp_path / "outbox"
    names = sorted(path.name for path in outbox.iterdir())
    assert names == ["d7.autofunnel@yoga.example.2.eml", "d7.autofunnel@yoga.example.eml", "d8.autofunnel@yoga.example.eml"]
    raw = (outbox / "d8.autofunnel@yoga.example.eml").read_bytes()
    assert raw.startswith(b"Return-Path: <bounces@yoga.example>\r\nDelivered-To: bob@example.com\r\n")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "Message 8" and message["To"] == "bob@example.com"


def test_file_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path / "deep" / "outbox")
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            with transport.session() as session:
                for number in range(20):
                    session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com", worker * 100 + number))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    files = list((tmp_path / "deep" / "outbox").iterdir())
    assert len(files) == 80
    assert not [path for path in files if path.name.startswith(".tmp-")]
    for path in files:
        assert email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["Subject"].startswith("Message ")


def test_a_message_without_message_id_still_gets_a_file(tmp_path: Path) -> None:
    with FileTransport(tmp_path).session() as session:
        session.send(BOUNCES, "zoe@example.com", b"Subject: x\r\n\r\nbody\r\n")
    [path] = list(tmp_path.iterdir())
    assert path.name.startswith("message-") and path.suffix == ".eml"


def test_an_unwritable_folder_is_a_transient_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with FileTransport(blocker / "outbox").session() as session, pytest.raises(TransientDeliveryError):
        session.send(BOUNCES, "zoe@example.com", simple_message("zoe@example.com"))


# Memory ---------------------------------------------------------------------------------------------------------


def test_in_memory_transport_keeps_messages_and_can_refuse() -> None:
    transport = InMemoryTransport()
    assert isinstance(transport, Transport)
    transport.refuse("gone@example.com", 550, "5.1.1 no such user")
    transport.refuse("later@example.com", 451, "4.2.0 later")
    with transport.session() as session:
        session.send(BOUNCES, "zoe@example.com", simple_message("Zoë <zoe@example.com>", 1))
        with pytest.raises(PermanentDeliveryError) as bounced:
            session.send(BOUNCES, "Gone@Example.com", simple_message("gone@example.com", 2))
        with pytest.raises(TransientDeliveryError):
            session.send(BOUNCES, "later@example.com", simple_message("later@example.com", 3))
    assert bounced.value.hard_bounce and bounced.value.code == 550
    assert transport.sessions == 1
    [sent] = transport.messages
    assert (sent.envelope_from, sent.recipient) == (BOUNCES, "zoe@example.com")
    assert sent.message["Subject"] == "Message 1"
    assert sent.message["To"].addresses[0].display_name == "Zoë"
    assert transport.to("ZOE@example.com") == [sent]
    transport.clear()
    assert transport.messages == [] and transport.sessions == 0
    with transport.session() as session:
        session.send(BOUNCES, "gone@example.com", simple_message("gone@example.com"))
    assert len(transport.messages) == 1
