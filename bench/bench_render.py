"""What one email costs, stage by stage: render, CSS, text, links + pixel, MIME, DKIM.

    python bench/bench_render.py [--emails 2000] [--runs 3]

Renders the starter `yoga/tripwire-offer` email for N different leads and
delivery ids, composing the stages the way the delivery service does, and
prints the per-email CPU cost of each stage (the best of several runs, so
another process on the machine inflates it less). The MIME stage is measured three
ways: autofunnel's lean builder, `email.mime`, and `EmailMessage` with
`policy.default` (SMTP line endings) — the figures behind the choice written
in autofunnel/mail/message.py.

Nothing here is a test; CI does not run it.
"""

from __future__ import annotations

import argparse
import email.policy
import gc
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autofunnel.mail.links import add_open_pixel, rewrite_links  # noqa: E402
from autofunnel.mail.message import build_message, format_address, message_id_for, sign_dkim  # noqa: E402
from autofunnel.mail.render import Renderer, html_to_text  # noqa: E402
from autofunnel.tokens import Tokens  # noqa: E402

BASE = "https://go.yoga.example"
SENDER = "Anna from Yoga <anna@yoga.example>"
NOW = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
DEADLINE = datetime(2026, 3, 5, 8, 0, tzinfo=UTC)
NAMES = ["Zoë", "Anna", "Jürgen", "Mia", "Léa", "Noah", "Ольга", "Sam", None]


def contexts(tokens: Tokens, count: int) -> list[tuple[int, dict[str, Any]]]:
    made = []
    for number in range(count):
        delivery_id = 100_000 + number

        def offer_url(name: str, delivery_id: int = delivery_id) -> str:
            return f"{BASE}/o/{tokens.sign('offer', [delivery_id, name])}"

        def countdown_url(name: str, delivery_id: int = delivery_id) -> str:
            return f"{BASE}/countdown/{tokens.sign('countdown', [delivery_id, name])}.gif"

        made.append((delivery_id, {
            "lead": {
                "email": f"lead{number}@example.com", "first_name": NAMES[number % len(NAMES)],
                "fields": {"segment": "beginner"}, "tags": ["yoga"], "timezone": "Europe/Paris",
            },
            "funnel": {"slug": "yoga", "title": "Yoga for beginners"},
            "event": {},
            "deadline": lambda name: DEADLINE,
            "offer_url": offer_url,
            "countdown_url": countdown_url,
            "unsubscribe_url": f"{BASE}/u/{tokens.sign('unsubscribe', [delivery_id])}",
            "postal_address": "Anna Yoga, 1 rue de la Paix, 75002 Paris",
        }))
    return made


def text_of(template: Any, context: dict[str, Any]) -> str:
    """A front-matter field: constant text as it is, else rendered."""
    if template is None:
        return ""
    return template if isinstance(template, str) else str(template.render(context))


def best_of(runs: int, count: int, work: Callable[[], object]) -> float:
    """Milliseconds of CPU per email: the fastest of `runs` passes over `count` emails.

    CPU time of this process (not wall time), so other work on a shared machine
    counts less; still, compare figures taken in one run.
    """
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / count * 1000


def mime_stdlib_mime(sender: str, to: str, subject: str, html: str, text: str, message_id: str, headers: dict[str, str]) -> bytes:
    message = MIMEMultipart("alternative")
    message["From"] = sender
    message["To"] = to
    message["Subject"] = Header(subject, "utf-8")  # type: ignore[assignment]
    message["Date"] = format_datetime(NOW)
    message["Message-ID"] = message_id
    for name, value in headers.items():
        message[name] = value
    message.attach(MIMEText(text, "plain", "utf-8"))
    message.attach(MIMEText(html, "html", "utf-8"))
    return message.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))


def mime_email_message(sender: str, to: str, subject: str, html: str, text: str, message_id: str, headers: dict[str, str]) -> bytes:
    message = EmailMessage(policy=email.policy.SMTP)  # policy.default with CRLF line endings
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = NOW
    message["Message-ID"] = message_id
    for name, value in headers.items():
        message[name] = value
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message.as_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emails", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--template", default="yoga/tripwire-offer")
    arguments = parser.parse_args()
    count, runs = arguments.emails, arguments.runs
    folder, name = arguments.template.split("/")

    tokens = Tokens(["bench-secret-key-0123456789abcdef"])
    renderer = Renderer(ROOT / "templates")
    made = contexts(tokens, count)
    renderer.render(folder, name, made[0][1])  # compile once, outside the timing
    compiled = renderer._get(folder, name)
    inliner = renderer._inliner

    # Inputs of each stage, prepared once so each stage is timed alone.
    jinja_html = []
    for _, context in made:
        subject = text_of(compiled.subject, context)
        preheader = text_of(compiled.preheader, context)
        jinja_html.append(compiled.body.render({**context, "subject": subject, "preheader": preheader}))
    rendered = [renderer.render(folder, name, context) for _, context in made]

    def links_and_pixel(delivery_id: int, html: str, unsubscribe: str) -> str:
        html = rewrite_links(html, lambda url: f"{BASE}/t/c/{tokens.sign('click', [delivery_id, url])}", keep={unsubscribe})
        return add_open_pixel(html, f"{BASE}/t/o/{tokens.sign('open', [delivery_id])}")

    final_html = [links_and_pixel(d, r.html, c["unsubscribe_url"]) for (d, c), r in zip(made, rendered, strict=True)]
    mime_inputs = []
    for (delivery_id, context), email_, html in zip(made, rendered, final_html, strict=True):
        to = format_address(context["lead"]["first_name"], context["lead"]["email"])
        headers = {
            "List-Unsubscribe": f"<{context['unsubscribe_url']}>, <mailto:unsubscribe@yoga.example?subject=d{delivery_id}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        mime_inputs.append((to, email_.subject, html, email_.text, message_id_for(delivery_id, "yoga.example"), headers))

    def run_jinja() -> None:
        for _, context in made:
            subject = text_of(compiled.subject, context)
            preheader = text_of(compiled.preheader, context)
            compiled.body.render({**context, "subject": subject, "preheader": preheader})

    def run_inline() -> None:
        for html in jinja_html:
            inliner.inline(html)

    def run_text() -> None:
        for html in jinja_html:
            html_to_text(html)

    def run_render() -> None:
        for _, context in made:
            renderer.render(folder, name, context)

    def run_links() -> None:
        for (delivery_id, context), email_ in zip(made, rendered, strict=True):
            links_and_pixel(delivery_id, email_.html, context["unsubscribe_url"])

    def run_lean() -> None:
        for to, subject, html, text, message_id, headers in mime_inputs:
            build_message(sender=SENDER, to=to, subject=subject, html=html, text=text, message_id=message_id,
                          date=NOW, headers=headers, domain="yoga.example")

    def run_stdlib_mime() -> None:
        for to, subject, html, text, message_id, headers in mime_inputs:
            mime_stdlib_mime(formataddr(("Anna from Yoga", "anna@yoga.example")), to, subject, html, text, message_id, headers)

    def run_email_message() -> None:
        for to, subject, html, text, message_id, headers in mime_inputs:
            mime_email_message(SENDER, to, subject, html, text, message_id, headers)

    def run_total() -> None:
        for delivery_id, context in made:
            email_ = renderer.render(folder, name, context)
            html = links_and_pixel(delivery_id, email_.html, context["unsubscribe_url"])
            build_message(
                sender=SENDER, to=format_address(context["lead"]["first_name"], context["lead"]["email"]),
                subject=email_.subject, html=html, text=email_.text,
                message_id=message_id_for(delivery_id, "yoga.example"), date=NOW,
                headers={
                    "List-Unsubscribe": f"<{context['unsubscribe_url']}>, <mailto:unsubscribe@yoga.example?subject=d{delivery_id}>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                },
                domain="yoga.example",
            )

    rows = [
        ("render: Jinja (subject, preheader, body)", run_jinja),
        ("render: CSS inline (css-inline)", run_inline),
        ("render: text part from HTML", run_text),
        ("Renderer.render (the three above)", run_render),
        ("links + pixel (with token signing)", run_links),
        ("MIME: lean builder (chosen)", run_lean),
        ("MIME: email.mime", run_stdlib_mime),
        ("MIME: EmailMessage + policy.default", run_email_message),
        ("TOTAL render + links + pixel + lean MIME", run_total),
    ]
    print(f"{count} emails of {folder}/{name}, best of {runs} runs, ms per email")
    sizes = [len(html) for html in final_html]
    print(f"(HTML after inlining, links and pixel: {sum(sizes) // len(sizes)} characters on average)")
    for label, work in rows:
        print(f"  {label:<44} {best_of(runs, count, work):7.3f}")

    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:  # pragma: no cover - cryptography is a test dependency
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    sample = [build_message(sender=SENDER, to=to, subject=subject, html=html, text=text, message_id=message_id,
                            date=NOW, headers=headers, domain="yoga.example")
              for to, subject, html, text, message_id, headers in mime_inputs[:200]]

    def run_dkim() -> None:
        for raw in sample:
            sign_dkim(raw, "yoga.example", "af", key)

    print(f"  {'DKIM sign, RSA-2048 (optional; dkimpy)':<44} {best_of(runs, len(sample), run_dkim):7.3f}")


if __name__ == "__main__":
    main()
