"""Handing queued emails to SMTP, one delivery at a time, at most once each.

For every delivery: (1) one transaction claims it (`queued` → `sending`, a
conditional UPDATE that exactly one caller can win) and re-checks, in that same
transaction, that the lead may still receive it; (2) the email is rendered and
handed to SMTP; (3) its outcome is recorded. A worker killed between (2) and (3)
leaves a `sending` row whose lease expires; the sweep marks it `failed:
interrupted` and never sends it again, because SMTP cannot say whether the
last message was taken. One SMTP connection serves the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, select, update

from autofunnel.domain.model import Flow
from autofunnel.errors import AutofunnelError
from autofunnel.mail.links import add_open_pixel, rewrite_links
from autofunnel.mail.message import build_message, format_address, message_id_for, sign_dkim
from autofunnel.mail.transport import DeliveryError, Session as SmtpSession, Transport
from autofunnel.domain.engine import ended_by_suppression, suppression_reason
from autofunnel.services.enrollments import (
    active_enrollment_ids,
    cancel_queued_for_leads,
    end_enrollments,
    ready_to_send,
    timeline_row,
    write_timeline,
)
from autofunnel.services.database import through_outage
from autofunnel.services.runtime import Runtime
from autofunnel.services.tallies import Cohort, count_sent_email, may_follow
from autofunnel.store.models import Deadline, Delivery, Enrollment, Event, Lead, StageEntry
from autofunnel.store.queries import among

MAX_ATTEMPTS = 5
RETRY_AFTER = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1))
"""Back-off after a temporary (4xx) SMTP answer; after MAX_ATTEMPTS the delivery fails."""


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Claim:
    id: int
    lead_id: int
    flow: str
    stage: str
    step_id: str
    kind: str
    template: str
    to_address: str
    attempts: int
    lead: dict[str, Any]
    deadlines: dict[str, datetime]
    event: dict[str, Any]
    cohort: Cohort | None


def deliver(rt: Runtime, delivery_ids: Sequence[int], *, transport: Transport | None = None) -> DeliveryReport:
    """Send these deliveries over one SMTP session; each ends sent, failed, skipped or queued for a retry."""
    report = DeliveryReport()
    if not delivery_ids:
        return report
    ready = through_outage(lambda: _mark_taken(rt, delivery_ids), for_seconds=_patience(rt), what="taking a batch")
    if not ready:
        return report
    with (transport or rt.transport).session() as smtp:
        for delivery_id in ready:
            _deliver_one(rt, smtp, delivery_id, report)
    return report


def _mark_taken(rt: Runtime, delivery_ids: Sequence[int]) -> list[int]:
    """The batch's emails still waiting to be sent, stamped as just handed out.

    A worker has them now, so the sweep must not take them for work the broker
    lost while the batch is being sent. Emails sent, cancelled or waiting out a
    retry's back-off meanwhile are left out (and not stamped): a second copy of a
    batch costs one statement, not a send-rate slot per email.
    """
    now = rt.clock.now()
    with rt.db.transaction() as session:
        ready = set(session.scalars(
            update(Delivery)
            .where(
                among(session, Delivery.id, delivery_ids), ready_to_send(now),
            )
            .values(dispatched_at=now)
            .returning(Delivery.id)
        ))
    return [delivery_id for delivery_id in delivery_ids if delivery_id in ready]


def _deliver_one(rt: Runtime, smtp: SmtpSession, delivery_id: int, report: DeliveryReport) -> None:
    rt.send_pace.wait_turn()
    claim = through_outage(lambda: _claim(rt, delivery_id, report), for_seconds=_patience(rt), what="claiming an email")
    if claim is None:
        return
    now = rt.clock.now()
    flow = rt.project.flows.get(claim.flow)
    try:
        if flow is None:
            raise AutofunnelError(f"{claim.flow!r} is no longer in the project")
        message, sender, message_id = _compose(rt, claim, flow, now)
    except AutofunnelError as exc:
        _finish(rt, claim, "failed", f"could not build the email: {exc}", report)
        return
    try:
        smtp.send(parseaddr(sender)[1], claim.to_address, message)
    except DeliveryError as exc:
        _failed_send(rt, claim, exc, report)
        return
    _finish(rt, claim, "sent", "handed to the mail server", report, message_id=message_id)


def _claim(rt: Runtime, delivery_id: int, report: DeliveryReport) -> _Claim | None:
    """Win the delivery or learn someone else has it; re-check the lead in the same transaction.

    The lease starts when this attempt runs, not when a first attempt failed in an outage.
    """
    now = rt.clock.now()
    with rt.db.transaction() as session:
        row = session.execute(
            update(Delivery)
            .where(
                Delivery.id == delivery_id, ready_to_send(now),
            )
            .values(status="sending", lease_until=now + timedelta(seconds=rt.settings.delivery_lease), attempts=Delivery.attempts + 1)
            .returning(
                Delivery.id, Delivery.lead_id, Delivery.enrollment_id, Delivery.flow, Delivery.stage, Delivery.step_id,
                Delivery.kind, Delivery.template, Delivery.to_address, Delivery.attempts,
            )
        ).first()
        if row is None:
            return None
        lead = session.execute(
            select(
                Lead.email, Lead.first_name, Lead.fields, Lead.tags, Lead.timezone, Lead.status,
                Enrollment.status.label("enrollment_status"), Enrollment.end_reason, Event.properties.label("event"),
                StageEntry.cohort_at, StageEntry.channel, StageEntry.entered_at, may_follow(row.lead_id, now).label("may_follow"),
            )
            .select_from(Lead)
            .outerjoin(Enrollment, Enrollment.id == row.enrollment_id)
            .outerjoin(Event, Event.id == Enrollment.event_id)
            .outerjoin(StageEntry, and_(StageEntry.lead_id == Lead.id, StageEntry.funnel == row.flow, StageEntry.position == 0))
            .where(Lead.id == row.lead_id)
        ).one()
        enrollment = _EnrollmentState(lead.enrollment_status, lead.end_reason) if lead.enrollment_status is not None else None
        reason = _refusal(row.kind, lead.status, enrollment)
        if reason is not None:
            session.execute(update(Delivery).where(Delivery.id == row.id).values(status="skipped", reason=reason, lease_until=None, finished_at=now))
            write_timeline(session, [timeline_row(row.lead_id, now, "skipped", reason, flow=row.flow, stage=row.stage, step_id=row.step_id)])
            report.skipped += 1
            report.lines.append(f"{lead.email} {row.flow} {row.step_id}: skipped — {reason}")
            return None
        deadlines = dict(
            session.execute(select(Deadline.name, Deadline.due_at).where(Deadline.lead_id == row.lead_id, Deadline.flow == row.flow)).all()
        )
        event: dict[str, Any] = dict(lead.event or {})
    return _Claim(
        row.id, row.lead_id, row.flow, row.stage, row.step_id, row.kind, row.template, row.to_address, row.attempts,
        {"email": lead.email, "first_name": lead.first_name, "fields": dict(lead.fields or {}), "tags": list(lead.tags or []), "timezone": lead.timezone},
        deadlines, event, Cohort(lead.cohort_at, lead.channel, lead.entered_at, lead.may_follow) if lead.cohort_at is not None else None,
    )


@dataclass(frozen=True)
class _EnrollmentState:
    status: str
    end_reason: str | None


def _refusal(kind: str, lead_status: str, enrollment: _EnrollmentState | None) -> str | None:
    """Why this email must not go now, or None. Checked inside the claim's transaction."""
    if kind == "email" and lead_status != "active":
        return "suppressed: lead not confirmed yet" if lead_status == "pending" else f"suppressed: lead {lead_status}"
    if enrollment is not None and enrollment.status in ("ended", "stopped"):
        return f"stage ended: {enrollment.end_reason}" if enrollment.status == "ended" else f"sequence stopped: {enrollment.end_reason}"
    if enrollment is not None and ended_by_suppression(enrollment.status, enrollment.end_reason):
        return f"suppressed: {enrollment.end_reason}"
    return None


def _domain(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2] or "localhost"


def _sender(rt: Runtime, flow: Flow) -> str:
    if flow.rules.sender:
        return flow.rules.sender
    if rt.settings.mail_from:
        return rt.settings.mail_from
    host = urlsplit(rt.settings.base_url).hostname or "localhost"
    return f"autofunnel <noreply@{host if '.' in host else host + '.localdomain'}>"


def _compose(rt: Runtime, claim: _Claim, flow: Flow, now: datetime) -> tuple[bytes, str, str]:
    """The message bytes, its sender and its Message-ID."""
    base = rt.settings.base_url
    tokens = rt.tokens
    unsubscribe_url = f"{base}/u/{tokens.sign('unsubscribe', [claim.lead_id, claim.id])}"

    def deadline(name: str) -> datetime:
        if name not in claim.deadlines:
            raise AutofunnelError(f"deadline {name!r} has not started for this lead")
        return claim.deadlines[name]

    def offer_url(name: str) -> str:
        if name not in flow.offers:
            raise AutofunnelError(f"no offer {name!r} in {flow.slug}")
        return f"{base}/o/{tokens.sign('offer', [claim.lead_id, flow.slug, name, claim.id])}"

    def countdown_url(name: str) -> str:
        return f"{base}/countdown/{tokens.sign('countdown', [claim.lead_id, flow.slug, name])}.gif"

    context = {
        "lead": claim.lead,
        "funnel": {"slug": flow.slug, "title": flow.title, "stage": claim.stage or None},
        "event": claim.event,
        "deadline": deadline,
        "offer_url": offer_url,
        "countdown_url": countdown_url,
        "unsubscribe_url": unsubscribe_url,
        "postal_address": rt.settings.postal_address,
    }
    rendered = rt.renderer.render(flow.slug, claim.template, context)
    sender = _sender(rt, flow)
    html = rendered.html
    headers: list[tuple[str, str]] = []
    if claim.kind == "email":
        html = rewrite_links(html, lambda url: f"{base}/t/c/{tokens.sign('click', [claim.id, url])}", keep={unsubscribe_url})
        html = add_open_pixel(html, f"{base}/t/o/{tokens.sign('open', [claim.id])}")
        mailto = f"mailto:{parseaddr(sender)[1]}?subject=unsubscribe"
        headers = [("List-Unsubscribe", f"<{unsubscribe_url}>, <{mailto}>"), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    domain = _domain(sender)
    message_id = message_id_for(claim.id, domain)
    message = build_message(
        sender=sender, to=format_address(claim.lead["first_name"] if claim.kind == "email" else None, claim.to_address), subject=rendered.subject, html=html, text=rendered.text,
        message_id=message_id, date=now, headers=headers, domain=domain,
    )
    settings = rt.settings
    if rt.dkim_key is not None and settings.dkim_domain and settings.dkim_selector:
        message = sign_dkim(message, settings.dkim_domain, settings.dkim_selector, rt.dkim_key)
    return message, sender, message_id


def _patience(rt: Runtime) -> float:
    """How long a worker waits for the database to come back: half a lease, so the
    sweep never calls an email interrupted while its worker is still trying to record it."""
    return rt.settings.delivery_lease / 2


def _finish(rt: Runtime, claim: _Claim, status: str, reason: str, report: DeliveryReport, *, message_id: str | None = None) -> None:
    now = rt.clock.now()
    values: dict[str, Any] = {"status": status, "reason": reason[:500], "lease_until": None, "finished_at": now}
    if status == "sent":
        values.update(sent_at=now, message_id=message_id)

    def record() -> None:
        with rt.db.transaction() as session:
            changed = session.execute(
                update(Delivery).where(Delivery.id == claim.id, Delivery.status == "sending").values(**values).returning(Delivery.opened_at, Delivery.clicked_at)
            ).first()
            if changed:
                write_timeline(session, [timeline_row(claim.lead_id, now, status, f"{claim.template}: {reason}", flow=claim.flow, stage=claim.stage, step_id=claim.step_id)])
                if status == "sent" and claim.kind == "email" and claim.cohort is not None and now >= claim.cohort.entered_at:
                    figures = ["sent"] + ["opened"] * (changed.opened_at is not None) + ["clicked"] * (changed.clicked_at is not None)
                    count_sent_email(session, claim.id, claim.lead_id, now, claim.flow, claim.cohort, claim.stage, claim.step_id, figures)

    through_outage(record, for_seconds=_patience(rt), what="recording a sent email")
    if status == "sent":
        report.sent += 1
    else:
        report.failed += 1
    report.lines.append(f"{claim.to_address} {claim.flow} {claim.step_id}: {status} — {reason}")


def _failed_send(rt: Runtime, claim: _Claim, error: DeliveryError, report: DeliveryReport) -> None:
    answer = f"{error.code} {error.text}".strip() if error.code else str(error)
    if error.maybe_sent:
        _finish(rt, claim, "failed", f"interrupted: the server may have taken it ({answer}); not sent again", report)
        return
    if error.permanent or claim.attempts >= MAX_ATTEMPTS:
        _finish(rt, claim, "failed", answer, report)
        if error.hard_bounce and claim.kind == "email":
            _suppress_bounced(rt, claim)
        return
    now = rt.clock.now()
    retry_at = now + RETRY_AFTER[min(claim.attempts, len(RETRY_AFTER)) - 1]

    def requeue() -> None:
        with rt.db.transaction() as session:
            changed = session.execute(
                update(Delivery).where(Delivery.id == claim.id, Delivery.status == "sending")
                .values(status="queued", lease_until=retry_at, dispatched_at=None, reason=f"retrying after: {answer}"[:500])
            ).rowcount
            if changed:
                write_timeline(session, [timeline_row(claim.lead_id, now, "retry", f"{answer}; retry at {retry_at.isoformat()}", flow=claim.flow, stage=claim.stage, step_id=claim.step_id)])

    through_outage(requeue, for_seconds=_patience(rt), what="queueing an email for a retry")
    report.retried += 1
    report.lines.append(f"{claim.to_address} {claim.flow} {claim.step_id}: retry — {answer}")


def _suppress_bounced(rt: Runtime, claim: _Claim) -> None:
    """A recipient refused for good at SMTP time is a hard bounce: nothing more goes to it."""
    now = rt.clock.now()

    def suppress() -> None:
        with rt.db.transaction() as session:
            changed = session.execute(
                update(Lead).where(Lead.id == claim.lead_id, Lead.status == "active").values(status="bounced", status_changed_at=now, updated_at=now)
            ).rowcount
            if changed:
                end_enrollments(session, active_enrollment_ids(session, [claim.lead_id]), "exited", suppression_reason("bounced"), now)
                cancel_queued_for_leads(session, [claim.lead_id], "suppressed: lead bounced")
                write_timeline(session, [timeline_row(claim.lead_id, now, "status", "bounced: the mail server refused the address")])

    through_outage(suppress, for_seconds=_patience(rt), what="suppressing a bounced address")

