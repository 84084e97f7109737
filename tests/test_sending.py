"""A lead's path through funnels and sequences, end to end: real database, real
SMTP on loopback, a fixed clock. These are the product's promises."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from smtp_sink import SmtpSink
from sqlalchemy import func, select, update

from autofunnel.cli import main
from autofunnel.clock import FixedClock
from autofunnel.services.delivery import deliver
from autofunnel.services.events import record_events
from autofunnel.services.inputs import parse_events, parse_subscribe
from autofunnel.services.optin import confirm
from autofunnel.services.leads import lead_view, subscribe
from autofunnel.services.scheduler import run_tick, sweep, tick
from autofunnel.services.tallies import rebuild_tallies
from autofunnel.store.db import HeldConnection
from autofunnel.store.facts import CHANNEL_ROWS
from autofunnel.store.models import CohortTally, Delivery, Enrollment, Lead, TimelineEntry

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # a Monday, 10:30 in Berlin


def sub(rt: Any, email: str, funnel: str = "yoga", **extra: Any) -> int:
    result = subscribe(rt, parse_subscribe({"email": email, "funnel": funnel, **extra}, rt.clock.now()), consent={"via": "test"})
    return result.lead_id


def events(rt: Any, *items: dict[str, Any]) -> Any:
    return record_events(rt, parse_events(list(items), rt.clock.now()))


def subjects(sink: SmtpSink, to: str | None = None) -> list[str]:
    return [m.message["Subject"] for m in sink.messages if to is None or to in m.recipients]


def emails(view: dict[str, Any]) -> list[dict[str, Any]]:
    """A lead's funnel and sequence emails, without its double opt-in confirmation."""
    return [d for d in view["deliveries"] if d["kind"] == "email"]


def strict(raw: bytes) -> EmailMessage:
    """Parse a message with the strict policy: any defect is a test failure."""
    message = BytesParser(policy=policy.strict).parsebytes(raw)
    assert not message.defects
    for part in message.walk():
        assert not part.defects, part.defects
    return message  # type: ignore[return-value]


def at(clock: FixedClock, delta: timedelta) -> datetime:
    clock.current = T0 + delta
    return clock.current


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def project_dir(project_dir: Path) -> Path:
    """The starter project without its random 10 % holdout, so counts of emails are exact."""
    yoga = project_dir / "funnels/yoga.yml"
    yoga.write_text(yoga.read_text().replace("holdout: 10%", "holdout: 0%"))
    return project_dir


@pytest.fixture
def rt(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> Any:
    return runtime_factory(project_dir, smtp_sink.url(), clock)


def test_a_lead_walks_the_yoga_funnel(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    sub(rt, "Ann@Example.com", first_name="Ann", timezone="Europe/Berlin")
    assert run_tick(rt).summary.endswith("1 sent, 0 failed, 0 skipped, 0 to retry")  # double opt-in: the confirmation only
    (confirmation,) = [strict(m.raw) for m in smtp_sink.messages]
    assert confirmation["Subject"] == "Please confirm your subscription to Yoga for beginners"
    assert confirmation["To"] == "Ann <ann@example.com>" and confirmation["List-Unsubscribe"] is None
    confirm_html = confirmation.get_body(("html",)).get_content()
    assert "/t/o/" not in confirm_html and "/t/c/" not in confirm_html
    link = re.search(r'href="http://testserver/confirm/([^"]+)"', confirm_html)
    assert link is not None and "/confirm/" in confirmation.get_body(("plain",)).get_content()
    assert run_tick(rt).summary.endswith("0 sent, 0 failed, 0 skipped, 0 to retry")  # nothing else until confirmed
    assert confirm(rt, link.group(1)).status == "active"
    run_tick(rt)
    assert len(smtp_sink.messages) == 2
    assert subjects(smtp_sink)[1].startswith("Ann")
    welcome = strict(smtp_sink.messages[1].raw)
    assert welcome["To"] == "Ann <ann@example.com>"
    assert welcome["Message-ID"].endswith(".autofunnel@yoga.example>")
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "http://testserver/u/" in welcome["List-Unsubscribe"]
    html = welcome.get_body(("html",)).get_content()
    assert "http://testserver/t/o/" in html and "http://testserver/t/c/" in html
    assert welcome.get_body(("plain",)).get_content().strip()

    at(clock, timedelta(days=1, minutes=1))
    run_tick(rt)
    assert len(smtp_sink.messages) == 3  # the tripwire offer, deadline started
    at(clock, timedelta(days=2, minutes=2))
    run_tick(rt)
    assert len(smtp_sink.messages) == 4  # the reminder: deadline not passed yet
    events(rt, {"type": "purchase", "email": "ann@example.com", "properties": {"product": "mini-course", "amount": 19}})
    run_tick(rt)
    view = lead_view(rt, "ann@example.com")
    assert view["funnels"][0]["stage"] == "tripwire"
    assert len(smtp_sink.messages) == 5  # thanks-mini answers the purchase at once: `capped: false` skips the 1-per-16h cap
    at(clock, timedelta(days=10))
    run_tick(rt)
    sent_steps = [d["step"] for d in emails(lead_view(rt, "ann@example.com")) if d["status"] == "sent"]
    assert "tripwire-expired" not in sent_steps  # the lead stage ended with the purchase
    assert sent_steps[:4] == ["welcome", "tripwire-offer", "tripwire-reminder", "thanks-mini"]


def test_every_generated_message_parses_strictly(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    sub(rt, "zoe@bücher.example", first_name="Zoë Ünïcode", timezone="Asia/Tokyo")
    events(rt, {"type": "confirmed", "email": "zoe@bücher.example"}, {
        "type": "cart_updated", "email": "zoe@bücher.example",
        "properties": {"items": [{"name": "Mat «Lotus»", "quantity": 2, "price": "12.50"}], "value": 25, "checkout_url": "https://shop.example/c?a=1&b=2"},
    })
    for hours in (0, 1, 25, 49, 73, 100):
        at(clock, timedelta(hours=hours, minutes=1))
        run_tick(rt)
    assert len(smtp_sink.messages) >= 5
    assert {m.recipients[0] for m in smtp_sink.messages} == {"zoe@xn--bcher-kva.example"}
    for received in smtp_sink.messages:
        message = strict(received.raw)
        assert message["Subject"]
        assert all(len(line) <= 998 for line in received.raw.split(b"\r\n"))


def test_tick_never_sends_twice(rt: Any, smtp_sink: SmtpSink) -> None:
    for n in range(5):
        sub(rt, f"lead{n}@example.com", funnel="yoga")
    events(rt, *({"type": "confirmed", "email": f"lead{n}@example.com"} for n in range(5)))
    for _ in range(4):
        run_tick(rt)
    assert len(smtp_sink.messages) == 5
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Delivery).where(Delivery.kind == "email")) == 5


@pytest.mark.postgres
def test_two_ticks_at_once_never_send_twice(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    first = runtime_factory(project_dir, smtp_sink.url(), clock)
    second = runtime_factory(project_dir, smtp_sink.url(), clock)
    leads = 300
    for n in range(leads):
        sub(first, f"p{n}@example.com", funnel="yoga")
    events(first, *({"type": "confirmed", "email": f"p{n}@example.com"} for n in range(leads)))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(runtime: Any) -> None:
        try:
            barrier.wait()
            run_tick(runtime)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    recipients = sorted(m.recipients[0] for m in smtp_sink.messages)
    assert len(recipients) == leads
    assert len(set(recipients)) == leads
    with first.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "sent")) == leads


def test_a_purchase_before_the_claim_stops_the_email(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    sub(rt, "bea@example.com", timezone="Europe/Berlin")
    events(rt, {"type": "confirmed", "email": "bea@example.com"})
    run_tick(rt)
    at(clock, timedelta(days=1, minutes=1))
    queued = tick(rt).queued  # the tripwire offer is queued, not yet handed to SMTP
    assert len(queued) == 1
    events(rt, {"type": "purchase", "email": "bea@example.com", "properties": {"product": "mini-course"}})
    report = deliver(rt, queued)
    assert report.sent == 0
    assert subjects(smtp_sink) == subjects(smtp_sink)[:1]  # only the welcome went out
    with rt.db.read() as session:
        status, reason = session.execute(select(Delivery.status, Delivery.reason).where(Delivery.id == queued[0])).one()
    assert status == "skipped"
    assert reason.startswith("cancelled: entered stage 'tripwire'")


def test_the_claim_rechecks_even_if_cancelling_missed(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    sub(rt, "cy@example.com")
    events(rt, {"type": "confirmed", "email": "cy@example.com"})
    queued = tick(rt).queued
    with rt.db.transaction() as session:
        session.execute(update(Enrollment).values(status="ended", end_reason="entered stage 'tripwire'"))
    report = deliver(rt, queued)
    assert report.skipped == 1 and smtp_sink.messages == []


def test_an_email_refused_at_the_claim_that_records_the_previous_one_is_skipped_with_why(rt: Any, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL a sent email's record and the next claim are one statement that commits on
    its own; it leaves a refused email queued, and the claim after it writes why it is skipped."""
    alone: list[Any] = []
    execute_alone = HeldConnection.execute_alone

    def watched(held: HeldConnection, statement: Any, params: dict[str, Any]) -> Any:
        row = execute_alone(held, statement, params)
        alone.append(None if row is None else row.id)
        return row

    monkeypatch.setattr(HeldConnection, "execute_alone", watched)
    for name in ("first", "second", "third"):
        sub(rt, f"{name}@example.com")
        events(rt, {"type": "confirmed", "email": f"{name}@example.com"})
    queued = tick(rt).queued
    assert len(queued) == 3
    with rt.db.read() as session:
        second = session.scalar(select(Delivery.lead_id).where(Delivery.id == queued[1]))
    with rt.db.transaction() as session:  # unsubscribed by hand, as if it had not reached the queued email
        session.execute(update(Lead).where(Lead.id == second).values(status="unsubscribed"))
    report = deliver(rt, queued)
    assert (report.sent, report.skipped) == (2, 1)
    assert sorted(m.recipients[0] for m in smtp_sink.messages) == ["first@example.com", "third@example.com"]
    with rt.db.read() as session:
        rows = session.execute(select(Delivery.id, Delivery.status, Delivery.reason).where(Delivery.id.in_(queued))).all()
    assert sorted((status, reason) for _, status, reason in rows) == [("sent", "handed to the mail server")] * 2 + [("skipped", "suppressed: lead unsubscribed")]
    with rt.db.read() as session:
        noted = session.execute(select(TimelineEntry.decision, TimelineEntry.reason).where(TimelineEntry.lead_id == second, TimelineEntry.decision == "skipped")).all()
    assert [tuple(row) for row in noted] == [("skipped", "suppressed: lead unsubscribed")]
    # PostgreSQL: the second email's claim went with the first's record and its check refused
    # it (None: never `sending`); the third was claimed alone, after the second's skip.
    assert alone == ([None] if rt.db.backend == "postgresql" else [])


@pytest.mark.parametrize("kind", ["email", "notify", "confirm"])
def test_the_claims_sql_check_refuses_exactly_what_the_refusal_rule_refuses(rt: Any, kind: str) -> None:
    """`_allowed` (SQL, in the claim that commits on its own) and `refusal` (the domain's rule) must agree
    on every lead and enrollment state and end cause; a looser SQL check would commit a claim it then skips."""
    from autofunnel.domain.engine import suppression_reason
    from autofunnel.domain.delivery import refusal
    from autofunnel.services.delivery_statements import allowed as _allowed
    from autofunnel.domain.statuses import EndCause, EnrollmentStatus, LeadStatus

    sub(rt, "ida@example.com")
    events(rt, {"type": "confirmed", "email": "ida@example.com"})
    delivery_id = tick(rt).queued[0]
    reasons = [None, suppression_reason("unsubscribed"), suppression_reason(""), "lead%s", "Lead bounced", "leads", "entered stage 'tripwire'"]
    disagreements = []
    with rt.db.transaction() as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(kind=kind))
        enrollment_id = session.scalar(select(Delivery.enrollment_id).where(Delivery.id == delivery_id))
        for lead_status in LeadStatus:
            for enrollment_status in (*EnrollmentStatus, None):
                for cause, reason in [(c, r) for c in (None, *EndCause) for r in reasons] if enrollment_status is not None else [(None, None)]:
                    session.execute(update(Lead).values(status=lead_status))
                    session.execute(
                        update(Enrollment).where(Enrollment.id == enrollment_id).values(status=enrollment_status or "active", end_cause=cause, end_reason=reason)
                    )
                    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(enrollment_id=enrollment_id if enrollment_status else None))
                    allowed = session.scalar(select(func.count()).select_from(Delivery).where(Delivery.id == delivery_id, _allowed())) == 1
                    if allowed != (refusal(kind, lead_status, enrollment_status, cause, reason) is None):
                        disagreements.append((lead_status, enrollment_status, cause, reason, allowed))
        session.rollback()
    assert disagreements == []


def test_the_claim_asks_only_about_the_claimed_leads_own_events(rt: Any, clock: FixedClock) -> None:
    """`may_follow` (whether something recorded may follow the email, so its tally must look) is
    about the claimed lead: SQLite's RETURNING named `lead_id` bare, which inside the subquery on
    `events` meant the event's own column, so any lead's unsubscribe made it true for everyone."""
    from autofunnel.services.delivery_statements import claim_statement

    for email in ("ida@example.com", "bob@example.com"):
        sub(rt, email)
        events(rt, {"type": "confirmed", "email": email})
    events(rt, {"type": "unsubscribed", "email": "bob@example.com"})
    (delivery_id,) = tick(rt).queued

    def may_follow() -> bool:
        now = clock.now()
        with rt.db.transaction() as session:
            row = session.execute(claim_statement(), {"delivery_id": delivery_id, "now": now, "lease_until": now + timedelta(minutes=5)}).one()
            session.rollback()
        return bool(row.may_follow)

    assert may_follow() is False, "bob's unsubscribe is not ida's"
    events(rt, {"type": "purchase", "email": "ida@example.com", "at": (clock.now() + timedelta(minutes=2)).isoformat(), "properties": {"product": "gift-card"}})
    assert may_follow() is True, "ida's purchase dated after now may follow her email"


def test_abandoned_cart_reminders_stop_on_purchase(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    cart = {"items": [{"name": "Mat", "quantity": 1, "price": 20}], "value": 20, "checkout_url": "https://shop.example/c"}
    events(rt, {"type": "cart_updated", "email": "dan@example.com", "properties": cart})
    at(clock, timedelta(minutes=30))
    events(rt, {"type": "cart_updated", "email": "dan@example.com", "properties": cart})  # restart: timers start over
    at(clock, timedelta(hours=1, minutes=1))
    run_tick(rt)
    assert smtp_sink.messages == []
    at(clock, timedelta(hours=1, minutes=31))
    run_tick(rt)
    assert len(smtp_sink.messages) == 1
    assert "https://shop.example/c" in smtp_sink.messages[0].message.get_body(("plain",)).get_content() or "testserver/t/c/" in smtp_sink.messages[0].message.get_body(("plain",)).get_content()
    events(rt, {"type": "purchase", "email": "dan@example.com", "properties": {"product": "mat"}})
    at(clock, timedelta(days=5))
    run_tick(rt)
    assert len(smtp_sink.messages) == 1
    view = lead_view(rt, "dan@example.com")
    runs = [(e["run"], e["status"], e["end_reason"]) for e in view["enrollments"] if e["flow"] == "abandoned-cart"]
    assert runs == [(1, "stopped", "restarted by a new start event"), (2, "stopped", "stopped by purchase")]


def test_a_late_cart_event_after_the_purchase_starts_nothing(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    at(clock, timedelta(hours=2))
    events(rt, {"type": "purchase", "email": "eve@example.com", "at": (T0 + timedelta(minutes=10)).isoformat()})
    events(rt, {"type": "cart_updated", "email": "eve@example.com", "at": T0.isoformat(), "properties": {"items": [], "value": 0, "checkout_url": "https://shop.example/c"}})
    at(clock, timedelta(days=5))
    run_tick(rt)
    assert smtp_sink.messages == []
    assert [e for e in lead_view(rt, "eve@example.com")["enrollments"]] == []


def test_an_unsubscribe_stops_every_funnel_at_once(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    sub(rt, "fay@example.com")
    events(rt, {"type": "confirmed", "email": "fay@example.com"}, {"type": "cart_updated", "email": "fay@example.com", "properties": {"items": [], "value": 1, "checkout_url": "https://shop.example/c"}})
    queued = tick(rt).queued
    events(rt, {"type": "unsubscribed", "email": "fay@example.com"})
    deliver(rt, queued)
    at(clock, timedelta(days=9))
    run_tick(rt)
    assert smtp_sink.messages == []
    view = lead_view(rt, "fay@example.com")
    assert view["status"] == "unsubscribed"
    assert {e["status"] for e in view["enrollments"]} == {"exited"}
    assert {d["status"] for d in view["deliveries"]} == {"skipped"}


def test_a_hard_bounce_at_smtp_time_suppresses_the_lead(rt: Any, smtp_sink: SmtpSink) -> None:
    smtp_sink.answer("gone@example.com", 550, "5.1.1 no such user")
    sub(rt, "gone@example.com", funnel="yoga")
    events(rt, {"type": "confirmed", "email": "gone@example.com"})
    run_tick(rt)
    view = lead_view(rt, "gone@example.com")
    assert view["status"] == "bounced"
    assert emails(view)[0]["status"] == "failed"
    assert emails(view)[0]["reason"].startswith("550")


def test_a_hard_bounce_stops_the_next_email_of_the_same_batch(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    """A worker records a sent email together with the next claim; a bounce is recorded
    (and the lead suppressed) before anything else of the batch is claimed."""
    yoga = project_dir / "funnels/yoga.yml"
    text = yoga.read_text().replace("frequency_cap: {max: 1, per: 16h, when_capped: defer}", "")
    yoga.write_text(text.replace("      - send: welcome             # templates/yoga/welcome.html\n", "      - send: welcome\n      - send: welcome\n        id: welcome-again\n"))
    rt = runtime_factory(project_dir, smtp_sink.url(), clock)
    smtp_sink.answer("gone@example.com", 550, "5.1.1 no such user")
    sub(rt, "gone@example.com")
    sub(rt, "kept@example.com")
    events(rt, {"type": "confirmed", "email": "gone@example.com"}, {"type": "confirmed", "email": "kept@example.com"})
    queued = tick(rt).queued
    assert len(queued) == 4
    report = deliver(rt, queued)
    assert (report.sent, report.failed) == (2, 1)
    assert subjects(smtp_sink, "kept@example.com") == subjects(smtp_sink)
    assert len(smtp_sink.messages) == 2
    gone = lead_view(rt, "gone@example.com")
    assert gone["status"] == "bounced"
    assert sorted((d["status"], d["reason"][:24]) for d in emails(gone)) == [("failed", "550 5.1.1 no such user"), ("skipped", "cancelled: lead bounced")]
    assert [d["status"] for d in emails(lead_view(rt, "kept@example.com"))] == ["sent", "sent"]


def test_an_open_and_click_written_before_the_send_is_recorded_count_with_it(rt: Any, smtp_sink: SmtpSink) -> None:
    """An email's record counts opens and clicks that reached its delivery while it was being
    handed over, as a recount does, both when it is recorded with the next email's claim (the
    first) and when it is recorded alone (the batch's last)."""
    for name in ("first", "second"):
        sub(rt, f"{name}@example.com")
        events(rt, {"type": "confirmed", "email": f"{name}@example.com"})
    queued = tick(rt).queued
    assert len(queued) == 2

    class OpenedWhileSending:
        @contextmanager
        def session(self) -> Iterator[Any]:
            with rt.transport.session() as smtp:
                self.smtp = smtp
                yield self

        def send(self, envelope_from: str, recipient: str, message: bytes) -> None:
            self.smtp.send(envelope_from, recipient, message)
            with rt.db.transaction() as session:
                now = rt.clock.now()
                session.execute(update(Delivery).where(Delivery.to_address == recipient).values(opened_at=now, clicked_at=now))

    def figures() -> dict[str, int]:
        """Per figure, its count on each basis (cohort and calendar count every email once each), by channel."""
        with rt.db.read() as session:
            rows = session.execute(
                select(CohortTally.figure, CohortTally.basis, func.sum(CohortTally.n)).where(CHANNEL_ROWS).group_by(CohortTally.figure, CohortTally.basis)
            ).all()
        counts: dict[str, set[int]] = {}
        for figure, _, n in rows:
            counts.setdefault(figure, set()).add(int(n))
        assert all(len({basis for f, basis, _ in rows if f == figure}) == 2 for figure in counts)
        return {figure: n for figure, (n,) in counts.items() if figure in ("sent", "opened", "clicked")}

    assert deliver(rt, queued, transport=OpenedWhileSending()).sent == 2
    assert len(smtp_sink.messages) == 2
    assert figures() == {"sent": 2, "opened": 2, "clicked": 2}
    with rt.db.transaction() as session:
        rebuild_tallies(session)
    assert figures() == {"sent": 2, "opened": 2, "clicked": 2}


def test_a_batch_stopped_by_an_error_still_records_the_email_it_had_sent(rt: Any, smtp_sink: SmtpSink) -> None:
    """An email's record waits for the next claim; when the batch fails before that claim,
    the email is recorded alone on the way out: `sent`, not left to become `interrupted`."""
    for name in ("first", "second"):
        sub(rt, f"{name}@example.com")
        events(rt, {"type": "confirmed", "email": f"{name}@example.com"})
    queued = tick(rt).queued

    class PaceThatBreaks:
        limited = False
        turns = 0

        def wait_turn(self) -> None:
            self.turns += 1
            if self.turns == 2:
                raise ConnectionError("the shared send-rate store went away")

    rt.send_pace = PaceThatBreaks()
    with pytest.raises(ConnectionError):
        deliver(rt, queued)
    assert [list(m.recipients) for m in smtp_sink.messages] == [["first@example.com"]]
    statuses = {emails(lead_view(rt, f"{name}@example.com"))[0]["status"] for name in ("first", "second")}
    assert statuses == {"sent", "queued"}


def test_a_temporary_failure_is_retried(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    smtp_sink.answer("later@example.com", 451, "4.7.1 try again later")
    sub(rt, "later@example.com", funnel="yoga")
    events(rt, {"type": "confirmed", "email": "later@example.com"})
    run_tick(rt)
    assert emails(lead_view(rt, "later@example.com"))[0]["status"] == "queued"
    smtp_sink.accept("later@example.com")
    at(clock, timedelta(seconds=30))
    run_tick(rt)
    assert smtp_sink.messages == []  # not before its back-off
    at(clock, timedelta(minutes=2))
    run_tick(rt)
    assert len(smtp_sink.messages) == 1
    assert emails(lead_view(rt, "later@example.com"))[0]["status"] == "sent"


def test_an_interrupted_send_is_failed_never_resent(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    sub(rt, "gus@example.com")
    events(rt, {"type": "confirmed", "email": "gus@example.com"})
    queued = tick(rt).queued
    with rt.db.transaction() as session:  # a worker claimed it and died before recording anything
        session.execute(update(Delivery).where(Delivery.id == queued[0]).values(status="sending", lease_until=clock.now() + timedelta(minutes=5)))
    at(clock, timedelta(minutes=6))
    swept = sweep(rt)
    (confirmation,) = [d["id"] for d in lead_view(rt, "gus@example.com")["deliveries"] if d["kind"] == "confirm"]
    assert (swept.retries, swept.lost, swept.interrupted) == ([confirmation], [], 1)  # the confirmation, never handed out yet
    run_tick(rt)
    assert smtp_sink.messages == []
    delivery = emails(lead_view(rt, "gus@example.com"))[0]
    assert delivery["status"] == "failed" and delivery["reason"].startswith("interrupted")


def test_editing_a_funnel_moves_waiting_leads_to_the_next_surviving_step(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    rt = runtime_factory(project_dir, smtp_sink.url(), clock)
    sub(rt, "hal@example.com")
    events(rt, {"type": "confirmed", "email": "hal@example.com"})
    run_tick(rt)
    assert lead_view(rt, "hal@example.com")["enrollments"][0]["step"] == "wait-after-welcome"
    yoga = project_dir / "funnels/yoga.yml"
    yoga.write_text(yoga.read_text().replace("      - send: welcome             # templates/yoga/welcome.html\n", "      - send: welcome\n        id: hello\n"))
    edited = runtime_factory(project_dir, smtp_sink.url(), clock)
    at(clock, timedelta(hours=23))
    run_tick(edited)
    assert len(smtp_sink.messages) == 1  # its wait is now `wait-after-hello`; the old one keeps its wake-up time
    at(clock, timedelta(days=1, minutes=1))
    run_tick(edited)
    assert len(smtp_sink.messages) == 2
    steps = [d["step"] for d in emails(lead_view(edited, "hal@example.com"))]
    assert steps == ["welcome", "tripwire-offer"]


def test_a_removed_stage_ends_its_leads(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    rt = runtime_factory(project_dir, smtp_sink.url(), clock)
    sub(rt, "ivy@example.com")
    events(rt, {"type": "confirmed", "email": "ivy@example.com"}, {"type": "purchase", "email": "ivy@example.com", "properties": {"product": "mini-course"}})
    yoga = project_dir / "funnels/yoga.yml"
    text = yoga.read_text()
    start, end = text.index("  - stage: tripwire"), text.index("  - stage: customer")
    yoga.write_text(text[:start] + text[end:])
    (project_dir / "templates/yoga/core-offer.html").unlink()  # it shows the removed stage's deadline
    edited = runtime_factory(project_dir, smtp_sink.url(), clock)
    run_tick(edited)
    enrollment = [e for e in lead_view(edited, "ivy@example.com")["enrollments"] if e["stage"] == "tripwire"][0]
    assert (enrollment["status"], enrollment["end_reason"]) == ("ended", "stage removed from the project")
    assert smtp_sink.messages == []


def test_tick_cli_dry_run_writes_nothing(rt: Any, project_dir: Path, smtp_sink: SmtpSink, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sub(rt, "jo@example.com", funnel="yoga")
    events(rt, {"type": "confirmed", "email": "jo@example.com"})
    for key, value in {
        "AUTOFUNNEL_PROJECT_DIR": str(project_dir), "AUTOFUNNEL_DATABASE_URL": database_url, "AUTOFUNNEL_SMTP_URL": smtp_sink.url(),
        "AUTOFUNNEL_SECRET_KEY": "test-secret-key-0123456789",
    }.items():
        monkeypatch.setenv(key, value)
    dry = CliRunner().invoke(main, ["tick", "--now", "2026-03-02T10:00:00Z", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "jo@example.com yoga/lead welcome: queued — email 'welcome' queued" in dry.output
    assert "nothing written or sent" in dry.output
    assert smtp_sink.messages == []
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Delivery).where(Delivery.kind == "email")) == 0
    refused = CliRunner().invoke(main, ["tick", "--now", "2026-03-02T10:00:00Z"])
    assert refused.exit_code == 2
    assert "from the clock" in refused.output and "--dry-run" in refused.output and "--force" in refused.output
    assert smtp_sink.messages == []
    real = CliRunner().invoke(main, ["tick", "--now", "2026-03-02T10:00:00Z", "--force"])
    assert real.exit_code == 0, real.output
    assert "jo@example.com yoga welcome: sent — handed to the mail server" in real.output
    assert len(smtp_sink.messages) == 1


def test_send_window_defers_to_the_leads_morning(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    at(clock, timedelta(hours=13))  # 22:30 in Berlin: outside 09:00-21:00
    sub(rt, "kim@example.com", timezone="Europe/Berlin")
    events(rt, {"type": "confirmed", "email": "kim@example.com"})
    run_tick(rt)
    assert smtp_sink.messages == []
    enrollment = lead_view(rt, "kim@example.com")["enrollments"][0]
    assert enrollment["due_at"] == "2026-03-03T08:00:00Z"
    at(clock, timedelta(hours=22, minutes=30))
    run_tick(rt)
    assert len(smtp_sink.messages) == 1


def test_holdout_leads_get_no_email_but_are_counted(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    yoga = project_dir / "funnels/yoga.yml"
    yoga.write_text(yoga.read_text().replace("holdout: 0%", "holdout: 50%"))
    rt = runtime_factory(project_dir, smtp_sink.url(), clock)
    for n in range(40):
        sub(rt, f"h{n}@example.com")
    events(rt, *({"type": "confirmed", "email": f"h{n}@example.com"} for n in range(40)))
    run_tick(rt)
    held = [n for n in range(40) if lead_view(rt, f"h{n}@example.com")["funnels"][0].get("holdout")]
    assert 5 < len(held) < 35
    assert len(smtp_sink.messages) == 40 - len(held)
    for n in held:
        assert not any(f"h{n}@example.com" in m.recipients for m in smtp_sink.messages)


def test_events_are_idempotent_by_id(rt: Any) -> None:
    sub(rt, "lu@example.com")
    first = events(rt, {"type": "purchase", "email": "lu@example.com", "id": "order-1", "properties": {"product": "mini-course"}})
    again = events(rt, {"type": "purchase", "email": "lu@example.com", "id": "order-1", "properties": {"product": "mini-course"}})
    assert (first.accepted, first.duplicates) == (1, 0)
    assert (again.accepted, again.duplicates) == (0, 1)
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 1


def test_a_cart_and_its_purchase_in_one_batch_send_nothing(rt: Any, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    cart = {"items": [], "value": 5, "checkout_url": "https://shop.example/c"}
    events(
        rt,
        {"type": "cart_updated", "email": "max@example.com", "properties": cart, "at": T0.isoformat()},
        {"type": "cart_updated", "email": "max@example.com", "properties": cart, "at": (T0 + timedelta(minutes=1)).isoformat()},
        {"type": "purchase", "email": "max@example.com", "at": (T0 + timedelta(minutes=2)).isoformat()},
        {"type": "cart_updated", "email": "ned@example.com", "properties": cart},
    )
    at(clock, timedelta(days=5))
    run_tick(rt)  # a pass long after the due time sends one email, not a burst of every missed step
    assert [m.recipients for m in smtp_sink.messages] == [("ned@example.com",)]
    assert lead_view(rt, "max@example.com")["enrollments"] == []  # its carts are older than its purchase


@pytest.mark.postgres
def test_concurrent_batches_about_one_lead_apply_one_after_the_other(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    runtimes = [runtime_factory(project_dir, smtp_sink.url(), clock) for _ in range(4)]
    cart = {"items": [], "value": 5, "checkout_url": "https://shop.example/c"}
    events(runtimes[0], {"type": "cart_updated", "email": "ola@example.com", "properties": cart})
    barrier = threading.Barrier(len(runtimes))
    errors: list[BaseException] = []

    def post(runtime: Any) -> None:
        try:
            barrier.wait()
            events(runtime, {"type": "cart_updated", "email": "ola@example.com", "properties": cart})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(r,)) for r in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    runs = [(e["run"], e["status"]) for e in lead_view(runtimes[0], "ola@example.com")["enrollments"]]
    assert sorted(runs) == [(1, "stopped"), (2, "stopped"), (3, "stopped"), (4, "stopped"), (5, "active")]


@pytest.mark.postgres
def test_a_worker_gives_its_connection_back_planning_for_each_batch(rt: Any, smtp_sink: SmtpSink) -> None:
    """Sending lets PostgreSQL reuse one-row plans on its held connection; the pool gets it back
    planning every statement for its parameters, as statements over batches of ids need, and
    with transactions, as every other unit of work needs."""
    for number in range(3):
        sub(rt, f"plan{number}@example.com")
        events(rt, {"type": "confirmed", "email": f"plan{number}@example.com"})
    assert "3 sent" in run_tick(rt).summary
    assert len(smtp_sink.messages) == 3
    pool = rt.db.engine.pool
    connections = [rt.db.engine.connect() for _ in range(pool.checkedin() + 1)]
    try:
        modes = {connection.exec_driver_sql("SHOW plan_cache_mode").scalar() for connection in connections}
        autocommits = {connection.connection.driver_connection.autocommit for connection in connections}
    finally:
        for connection in connections:
            connection.close()
    assert modes == {"force_custom_plan"}
    assert autocommits == {False}  # the statements that went alone left no connection in autocommit
