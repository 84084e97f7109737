"""Test a funnel like code: the real services on a virtual clock, in pytest.

```python
from autofunnel.testing import FunnelTest

def test_welcome_then_offer():
    with FunnelTest(".") as t:
        t.subscribe("ann@example.com", "yoga", held_out=False, confirm=True)
        t.advance("1d")
        assert [m.template for m in t.outbox] == ["welcome", "tripwire-offer"]
```

A `FunnelTest` loads a project folder (refusing one `validate` rejects), makes a
temporary SQLite database migrated by Alembic as production's is, and runs the
same services production runs — subscribe, record_events, the scheduler pass,
delivery, the tracking links, the report — with a mail transport that keeps
every message in memory. No server, broker or SMTP; the project's own database
and outbox are never touched.

The clock is virtual and starts on Monday 2026-01-05 10:00 UTC (inside the
example's send window) unless `start=` says otherwise. `advance("1d")` walks it
forward one due moment at a time, running each scheduler pass at the moment it
falls due, as a scheduler running all along would. Random draws (holdout, A/B
variants) come from `seed`, so a test is repeatable; `subscribe(held_out=False)`
takes the holdout draw out of a test altogether.

`simulate` and `demo` drive the same class with many synthetic leads.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any

from autofunnel.clock import FixedClock, ensure_utc
from autofunnel.domain.durations import parse_duration
from autofunnel.domain.statuses import DeliveryStatus, LeadStatus
from autofunnel.mail.message import delivery_id_from_message_id
from autofunnel.mail.transport import InMemoryTransport, SentMessage

__all__ = ["DEFAULT_START", "Email", "FunnelTest", "LeadRef"]

DEFAULT_START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
"""A Monday morning: inside the example funnel's send window, away from its quiet Sunday."""

HUMAN_AGENT = "Mozilla/5.0 (X11; Linux x86_64) autofunnel-testing"
"""The User-Agent of the opens and clicks a test makes: a person's browser, not a scanner."""

_MIGRATED: dict[str, Path] = {}
_MIGRATED_LOCK = threading.Lock()


def _migrated_template() -> Path:
    """One database migrated to head per process, copied for each test: Alembic runs once."""
    from autofunnel.store.migrate import upgrade

    with _MIGRATED_LOCK:
        path = _MIGRATED.get("head")
        if path is None or not path.exists():
            folder = Path(tempfile.mkdtemp(prefix="autofunnel-testing-"))
            path = folder / "template.db"
            upgrade(f"sqlite:///{path}")
            _MIGRATED["head"] = path
        return path


@dataclass(frozen=True)
class LeadRef:
    """A lead the test made: its id and address (pass either to `event`, `lead`, `emails_to`)."""

    id: int
    email: str
    status: str

    def __str__(self) -> str:
        return self.email


@dataclass(frozen=True)
class Email:
    """One email that went out (to the in-memory transport), as the reader would get it."""

    delivery_id: int
    to: str
    lead: str
    funnel: str
    stage: str
    step: str
    template: str
    kind: str
    sent_at: datetime
    subject: str
    html: str
    text: str
    links: tuple[str, ...]
    """Where each link in the HTML leads, in order: the URL behind a click-tracking link or
    an offer link (the live offer URL at the moment of sending), other links as written."""
    tracked_links: tuple[str, ...]
    """The hrefs exactly as written into the email (`/t/c/…`, `/o/…`, the unsubscribe page)."""
    raw: bytes = field(repr=False)


class _Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value:
                    self.hrefs.append(value)


def _hrefs(html: str) -> list[str]:
    parser = _Hrefs()
    parser.feed(html)
    return parser.hrefs


@functools.cache
def _next_due_statement() -> Any:
    """Both earliest moments in one statement, built once: a simulation asks before every pass."""
    from sqlalchemy import func, select

    from autofunnel.services.enrollments import active_enrollment, in_flight
    from autofunnel.store.models import Delivery, Enrollment

    return select(
        select(func.min(Enrollment.due_at)).where(active_enrollment()).scalar_subquery(),
        select(func.min(Delivery.lease_until)).where(in_flight(), Delivery.status == DeliveryStatus.QUEUED).scalar_subquery(),
    )


class FunnelTest:
    """A project under test: leads, events and a virtual clock over the real services."""

    def __init__(
        self,
        project_dir: str | Path = ".",
        *,
        start: datetime | str | None = None,
        seed: int = 0,
        settings: Mapping[str, str] | None = None,
        run_due: bool = True,
        tick_every: timedelta | None = None,
        database: Path | None = None,
    ) -> None:
        import random

        from autofunnel.config import load_settings
        from autofunnel.services.runtime import Runtime

        self.project_dir = Path(project_dir)
        begin = datetime.fromisoformat(start.replace("Z", "+00:00")) if isinstance(start, str) else start
        self.clock = FixedClock(ensure_utc(begin or DEFAULT_START))
        self._grid_origin = self.clock.now()
        self._folder = Path(tempfile.mkdtemp(prefix="autofunnel-test-"))
        if database is None:
            database = self._folder / "autofunnel.db"
            shutil.copyfile(_migrated_template(), database)
        else:
            from autofunnel.store.migrate import upgrade

            upgrade(f"sqlite:///{database}")
        environ = {
            "AUTOFUNNEL_DATABASE_URL": f"sqlite:///{database}",
            "AUTOFUNNEL_SMTP_URL": f"file://{self._folder / 'outbox'}",
            "AUTOFUNNEL_SECRET_KEY": "autofunnel-testing-not-a-secret",
            "AUTOFUNNEL_BASE_URL": "http://localhost:8000",
            "AUTOFUNNEL_TRACKING_BATCH_SECONDS": "0",  # an open or click counts at once, as each step checks
            **{(k if k.startswith("AUTOFUNNEL_") else f"AUTOFUNNEL_{k.upper()}"): v for k, v in (settings or {}).items()},
        }
        self.runtime = Runtime.open(load_settings(self.project_dir, environ=environ), self.clock)
        self.runtime.rng = random.Random(seed)
        self.transport = InMemoryTransport()
        self.runtime.transport = self.transport  # type: ignore[misc]
        self.auto_run = run_due
        self.tick_every = tick_every
        """None: each pass runs at the exact moment work falls due. A duration: passes run on that
        grid (a scheduler waking every 15 minutes), far fewer of them for a long simulation."""
        self._passes_since_fold = 0
        self.outbox: list[Email] = []
        self.sent_ids: list[int] = []
        """Every delivery id sent, in order (cheaper than `outbox` for counting)."""
        self._taken = 0
        self.render_outbox = True
        """False keeps `outbox` empty and only `sent_ids` (the simulator's setting, for speed)."""
        self._closed = False

    # Context -------------------------------------------------------------------------

    def __enter__(self) -> FunnelTest:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.runtime.close()
            shutil.rmtree(self._folder, ignore_errors=True)

    @property
    def now(self) -> datetime:
        return self.clock.now()

    # Leads and events ----------------------------------------------------------------

    def subscribe(
        self,
        email: str,
        funnel: str,
        *,
        first_name: str | None = None,
        timezone: str | None = None,
        source: Mapping[str, str] | None = None,
        owner: str | None = None,
        fields: Mapping[str, Any] | None = None,
        tags: list[str] | None = None,
        confirm: bool = False,
        held_out: bool | None = None,
        at: datetime | None = None,
    ) -> LeadRef:
        """Subscribe as POST /api/v1/subscribe does (`confirm=True` also records the double
        opt-in's `confirmed`); `held_out` decides the funnel's holdout draw instead of the seed."""
        from autofunnel.services.inputs import parse_subscribe
        from autofunnel.services.leads import subscribe

        body: dict[str, Any] = {"email": email, "funnel": funnel}
        for key, value in (("first_name", first_name), ("timezone", timezone), ("owner", owner)):
            if value is not None:
                body[key] = value
        if source:
            body["source"] = dict(source)
        if fields:
            body["fields"] = dict(fields)
        if tags:
            body["tags"] = list(tags)
        if at is not None:
            body["at"] = at.isoformat()
        data = parse_subscribe(body, self.now)
        rng = self.runtime.rng
        if held_out is not None:
            self.runtime.rng = _Drawn(0.0 if held_out else 1.0 - 1e-12, rng)
        try:
            result = subscribe(self.runtime, data, consent={"source": "autofunnel.testing"})
        finally:
            self.runtime.rng = rng
        lead = LeadRef(result.lead_id, data.email, result.status)
        if confirm and result.status == LeadStatus.PENDING:
            self.event(lead, "confirmed")
            lead = LeadRef(result.lead_id, data.email, LeadStatus.ACTIVE)
        elif self.auto_run:
            self.run_due()
        return lead

    def confirm(self, lead: LeadRef | str) -> None:
        """The double opt-in's confirmation, as the confirmation page records it."""
        self.event(lead, "confirmed")

    def event(self, lead: LeadRef | str | int, type: str, *, at: datetime | None = None, id: str | None = None, **properties: Any) -> int:
        """Record one event (as POST /api/v1/events); how many were new (0 for a duplicate id)."""
        item: dict[str, Any] = {"type": type, "properties": properties}
        item.update(_who(lead))
        if at is not None:
            item["at"] = at.isoformat()
        if id is not None:
            item["id"] = id
        return self.events([item])

    def events(self, items: list[Mapping[str, Any]]) -> int:
        """Record a batch of events in the API's shape (`type`, `email` or `lead_id`, `id`, `at`, `properties`)."""
        from autofunnel.services.events import record_events
        from autofunnel.services.inputs import parse_events

        result = record_events(self.runtime, parse_events([dict(item) for item in items], self.now))
        if self.auto_run:
            self.run_due()
        return result.accepted

    def open(self, email: Email | int) -> None:
        """The reader opens the email (its tracking pixel is fetched by a person's mail client)."""
        from autofunnel.services.tracking import track_open

        delivery_id = email if isinstance(email, int) else email.delivery_id
        self._after_bot_window(delivery_id)
        track_open(self.runtime, self.runtime.tokens.sign("open", [delivery_id]), HUMAN_AGENT)
        if self.auto_run:
            self.run_due()

    def click(self, email: Email | int, url: str | None = None) -> str:
        """The reader follows a link (the first one, or the one leading to `url`); where it goes."""
        from autofunnel.services.tracking import track_click

        delivery_id = email if isinstance(email, int) else email.delivery_id
        if url is None:
            if not isinstance(email, Email) or not email.links:
                raise ValueError("give the URL to click, or an Email with links")
            url = email.links[0]
        self._after_bot_window(delivery_id)
        target = track_click(self.runtime, self.runtime.tokens.sign("click", [delivery_id, url]), HUMAN_AGENT)
        if self.auto_run:
            self.run_due()
        return target

    def _after_bot_window(self, delivery_id: int) -> None:
        """Opens within seconds of sending are a scanner's; a person's come at least a minute later."""
        from sqlalchemy import select

        from autofunnel.store.models import Delivery

        with self.runtime.db.read() as session:
            sent_at = session.scalar(select(Delivery.sent_at).where(Delivery.id == delivery_id))
        if sent_at is not None and self.now < sent_at + timedelta(minutes=1):
            self.clock.current = sent_at + timedelta(minutes=1)

    def spend(self, channel: str, amount: str | float, day: str, currency: str = "EUR") -> None:
        from autofunnel.services.spend import add_spend, parse_spend

        add_spend(self.runtime, parse_spend(channel, str(amount), day, currency))

    # Time ----------------------------------------------------------------------------

    def advance(self, duration: str | timedelta) -> datetime:
        """Move the clock forward (`"30m"`, `"1d"`, `"1w"`, or a timedelta), running every
        scheduler pass at the moment it falls due on the way; the new now."""
        delta = parse_duration(duration) if isinstance(duration, str) else duration
        return self.advance_to(self.now + delta)

    def advance_to(self, moment: datetime) -> datetime:
        target = ensure_utc(moment)
        if target < self.now:
            raise ValueError(f"the clock only moves forward: {target.isoformat()} is before {self.now.isoformat()}")
        last: datetime | None = None
        while True:
            due = self.next_due()
            if due is None or due > target:
                break
            if self.tick_every is not None:
                due = min(self._on_grid(due), target)
            if due == last:
                break  # nothing moved (work set aside keeps failing): stop rather than spin
            last = due
            self.clock.current = min(max(due, self.now), target)
            self.run_due()
        self.clock.current = target
        return target

    def _on_grid(self, moment: datetime) -> datetime:
        assert self.tick_every is not None
        step = self.tick_every.total_seconds()
        offset = (moment - self._grid_origin).total_seconds()
        ticks = -(-offset // step)
        return self._grid_origin + timedelta(seconds=ticks * step)

    def next_due(self) -> datetime | None:
        """The earliest moment a step or a retried email falls due."""
        with self.runtime.db.look() as connection:
            step, retry = connection.execute(_next_due_statement()).one()
        moments = [ensure_utc(m if m.tzinfo else m.replace(tzinfo=UTC)) for m in (step, retry) if m is not None]
        return min(moments) if moments else None

    def run_due(self) -> None:
        """One scheduler pass at the current moment and the delivery of what it queued, as
        `autofunnel tick` does, with the in-memory transport: due steps, the double opt-in's
        chores (reminders, erasure), and every queued email not yet handed out (confirmations,
        retries whose back-off ended)."""
        from autofunnel.services.delivery import deliver
        from autofunnel.services.optin import opt_in_pass
        from autofunnel.services.scheduler import tick
        from autofunnel.services.sweep import sweep

        queued = tick(self.runtime).queued
        opt_in_pass(self.runtime, self.now)
        swept = sweep(self.runtime)
        ids = sorted(set(queued) | set(swept.retries) | set(swept.lost))
        if ids:
            deliver(self.runtime, ids)
        self._passes_since_fold += 1
        if self._passes_since_fold >= 200:
            self.fold()
        self._take_sent()

    def fold(self) -> None:
        """Merge the report's tally rows, as every scheduler pass does in production now and then."""
        from autofunnel.services.scheduler import fold_report_tallies

        fold_report_tallies(self.runtime)
        self._passes_since_fold = 0

    def _take_sent(self) -> None:
        messages = self.transport.messages
        fresh = messages[self._taken:]
        self._taken = len(messages)
        if not fresh:
            return
        if not self.render_outbox:
            for sent in fresh:
                delivery_id = _delivery_id(sent.raw)
                if delivery_id is not None:
                    self.sent_ids.append(delivery_id)
            del messages[:]
            self._taken = 0
            return
        for sent in fresh:
            email = self._read(sent)
            self.sent_ids.append(email.delivery_id)
            self.outbox.append(email)

    def _read(self, sent: SentMessage) -> Email:
        from sqlalchemy import select

        from autofunnel.services.tracking import offer_target
        from autofunnel.store.models import Delivery, Lead

        message = sent.message
        delivery_id = delivery_id_from_message_id(str(message["Message-ID"]))
        assert delivery_id is not None, "every email autofunnel sends carries its delivery id"
        with self.runtime.db.read() as session:
            row = session.execute(
                select(Delivery, Lead.email).join(Lead, Lead.id == Delivery.lead_id).where(Delivery.id == delivery_id)
            ).one()
        delivery, lead_email = row
        html_part = message.get_body(("html",))
        text_part = message.get_body(("plain",))
        html = html_part.get_content() if html_part is not None else ""
        text = text_part.get_content() if text_part is not None else ""
        hrefs = _hrefs(html)
        links = []
        base = self.runtime.settings.base_url
        for href in hrefs:
            if href.startswith(f"{base}/t/c/"):
                links.append(self.runtime.tokens.load("click", href[len(base) + 5:])[1])
            else:
                links.append(href)
        resolved = []
        for link in links:
            if link.startswith(f"{base}/o/"):
                resolved.append(offer_target(self.runtime, link[len(base) + 3:]))
            else:
                resolved.append(link)
        return Email(
            delivery_id=delivery_id, to=sent.recipient, lead=lead_email, funnel=delivery.flow, stage=delivery.stage,
            step=delivery.step_id, template=delivery.template, kind=delivery.kind,
            sent_at=ensure_utc(delivery.sent_at or self.now), subject=str(message["Subject"]), html=html, text=text,
            links=tuple(resolved), tracked_links=tuple(hrefs), raw=sent.raw,
        )

    # Reading -------------------------------------------------------------------------

    def emails_to(self, lead: LeadRef | str) -> list[Email]:
        address = str(lead).lower()
        return [email for email in self.outbox if email.to.lower() == address or email.lead == address]

    def templates(self, lead: LeadRef | str | None = None) -> list[str]:
        """The templates sent so far (to `lead`), in order: the usual thing to assert on."""
        emails = self.outbox if lead is None else self.emails_to(lead)
        return [email.template for email in emails]

    def lead(self, lead: LeadRef | str | int) -> dict[str, Any]:
        """The lead as GET /api/v1/leads/<key> shows it: stage per funnel, events, timeline."""
        from autofunnel.services.leads import lead_view

        key = str(lead.id) if isinstance(lead, LeadRef) else str(lead)
        return lead_view(self.runtime, key)

    def report(self, funnel: str, **params: str) -> dict[str, Any]:
        """The funnel report (GET /api/v1/reports/<funnel>) over what the test did."""
        from autofunnel.services.report import funnel_report, parse_report_query

        self.fold()
        return funnel_report(self.runtime, parse_report_query(funnel, params, self.now.date()))


class _Drawn:
    """A random source whose next `random()` is given; the rest goes to the real one."""

    def __init__(self, value: float, rest: Any) -> None:
        self._value, self._rest = value, rest

    def random(self) -> float:
        return self._value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rest, name)


_MESSAGE_ID = re.compile(rb"^Message-ID: *(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


def _delivery_id(raw: bytes) -> int | None:
    match = _MESSAGE_ID.search(raw, 0, 4096)
    return delivery_id_from_message_id(match.group(1).decode("ascii")) if match else None


def _who(lead: LeadRef | str | int) -> dict[str, Any]:
    if isinstance(lead, LeadRef):
        return {"lead_id": lead.id}
    if isinstance(lead, int):
        return {"lead_id": lead}
    return {"email": lead}


if "pytest" in sys.modules:  # under pytest (or `-p autofunnel.testing`): offer the fixture too
    import pytest

    @pytest.fixture
    def funnel_test() -> Iterator[FunnelTest]:
        """A FunnelTest of the project in the current folder (or AUTOFUNNEL_PROJECT_DIR)."""
        with FunnelTest(os.environ.get("AUTOFUNNEL_PROJECT_DIR", ".")) as test:
            yield test
