"""Handing queued emails to SMTP, one delivery at a time, at most once each.

For every delivery: (1) one transaction claims it (`queued` → `sending`, a
conditional UPDATE that exactly one caller can win) and re-checks, in that same
statement, that the lead may still receive it; (2) the email is rendered and
handed to SMTP; (3) its outcome is recorded. A worker killed between (2) and (3)
leaves a `sending` row whose lease expires; the sweep marks it `failed:
interrupted` and never sends it again, because SMTP cannot say whether the
last message was taken. One SMTP connection and one database connection serve
the whole batch.

Each email's outcome is recorded in the transaction that claims the next one,
right after its SMTP handoff: one commit per email instead of two, and the
window between handoff and record is no wider than before. On PostgreSQL the
record (delivery, timeline entry, tally) and the claim are even one statement,
committed on its own; its claim takes only an email the lead may still
receive, and one it leaves queued goes to the transaction that claims it and
writes why it is skipped. When a send rate
makes the next email wait, when the address bounced (the lead is suppressed
before anything else is claimed), or when the batch ends, the outcome is
recorded alone first. Per-lead details the template needs (name, fields, deadlines, the
triggering event, the lead's cohort) are read once per batch; what decides
whether an email may go is read in the claim itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Update, and_, bindparam, insert, null, or_, select, update
from sqlalchemy.engine import Connection

from autofunnel.domain.model import Flow
from autofunnel.errors import AutofunnelError
from autofunnel.mail.context import email_context
from autofunnel.mail.links import add_open_pixel, rewrite_links
from autofunnel.mail.render import TemplateRenderError
from autofunnel.mail.templates import lead_context
from autofunnel.mail.message import build_message, format_address, message_id_for, sign_dkim
from autofunnel.mail.transport import DeliveryError, Session as SmtpSession, Transport
from autofunnel.services.senders import address_of, dkim_ready, sender_domain, sender_of, tracks_opens
from autofunnel.domain.delivery import CLOSED_ENROLLMENT, RECIPIENT_STATUS, Retry, after_failure, refusal
from autofunnel.domain.engine import suppression_reason
from autofunnel.services.leads import REMINDER_STEP
from autofunnel.services.optin import render_confirmation
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
from autofunnel.services.tallies import Cohort, count_sent_email, may_follow, sent_email_tally, sent_email_tally_params
from autofunnel.domain.statuses import DeliveryStatus, EndCause
from autofunnel.store.delivery_moves import move
from autofunnel.store.db import HeldConnection
from autofunnel.store.models import Deadline, Delivery, Enrollment, Event, Lead, StageEntry, TimelineEntry
from autofunnel.store.queries import among
from autofunnel.store.types import UTCDateTime

log = logging.getLogger(__name__)

T = TypeVar("T")


RENDER_FAILED = "template failed to render"
"""How the reason of an email whose template raised begins; `status` and `/healthz` count them by it."""


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    lines: list[str] = field(default_factory=list)
    render_failures: list[str] = field(default_factory=list)
    """`flow/template` of each email that failed because its template did not render."""


@dataclass(frozen=True)
class _Lead:
    """What a batch reads once per email about its lead, for the template and the tallies."""

    lead: dict[str, Any]
    deadlines: dict[str, datetime]
    event: dict[str, Any]
    cohort: Cohort | None


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


@dataclass(frozen=True)
class _Outcome:
    """How one claimed email ended, waiting to be recorded."""

    claim: _Claim
    status: str
    """`sent`, `failed` or `retry`."""
    reason: str
    at: datetime
    message_id: str | None = None
    retry_at: datetime | None = None
    hard_bounce: bool = False


class _Batch:
    """One deliver() call's database side: a held connection, every unit of work through an outage."""

    def __init__(self, rt: Runtime, held: HeldConnection, report: DeliveryReport) -> None:
        self.rt, self.held, self.report = rt, held, report
        self.leads: dict[int, _Lead] = {}
        self.pending: _Outcome | None = None
        """The last email's outcome, until it is recorded (with the next claim, or alone)."""

    def run(self, work: Callable[[Connection], T], what: str) -> T:
        def attempt() -> T:
            with self.held.transaction() as connection:
                return work(connection)

        return through_outage(attempt, for_seconds=_patience(self.rt), what=what)


def deliver(rt: Runtime, delivery_ids: Sequence[int], *, transport: Transport | None = None) -> DeliveryReport:
    """Send these deliveries over one SMTP session; each ends sent, failed, skipped or queued for a retry."""
    report = DeliveryReport()
    if not delivery_ids:
        return report
    with rt.db.held() as held:
        batch = _Batch(rt, held, report)
        ready = batch.run(lambda connection: _mark_taken(connection, rt.clock.now(), delivery_ids), "taking a batch")
        if not ready:
            return report
        batch.leads = batch.run(lambda connection: _read_leads(connection, ready), "reading the batch's leads")
        held.use_generic_plans()
        paced = rt.send_pace.limited
        with (transport or rt.transport).session() as smtp:
            try:
                for delivery_id in ready:
                    if batch.pending is not None and (paced or batch.pending.hard_bounce):
                        _record_alone(batch)
                    rt.send_pace.wait_turn()
                    claim = _claim(batch, delivery_id)
                    if claim is not None:
                        batch.pending = _send(rt, smtp, claim)
                _record_alone(batch)
            except BaseException:
                _record_on_the_way_out(batch)
                raise
    return report


def _record_on_the_way_out(batch: _Batch) -> None:
    """A sent email whose record was to go with the next claim, when that claim failed: its
    record alone, so it ends `sent`, not `interrupted`; the error that stopped the batch wins."""
    outcome = batch.pending
    try:
        _record_alone(batch)
    except Exception:
        assert outcome is not None
        log.exception("could not record %s to %s; the sweep will mark it interrupted", outcome.status, outcome.claim.to_address)


def _mark_taken(connection: Connection, now: datetime, delivery_ids: Sequence[int]) -> list[int]:
    """The batch's emails still waiting to be sent, stamped as just handed out.

    A worker has them now, so the sweep must not take them for work the broker
    lost while the batch is being sent. Emails sent, cancelled or waiting out a
    retry's back-off meanwhile are left out (and not stamped): a second copy of a
    batch costs one statement, not a send-rate slot per email.
    """
    ready = set(connection.scalars(
        update(Delivery.__table__)
        .where(among(connection, Delivery.id, delivery_ids), ready_to_send(now))
        .values(dispatched_at=now)
        .returning(Delivery.id)
    ))
    return [delivery_id for delivery_id in delivery_ids if delivery_id in ready]


def _read_leads(connection: Connection, delivery_ids: Sequence[int]) -> dict[int, _Lead]:
    """Per delivery, its lead's details for the template and its first stage entry for the tallies."""
    d = Delivery
    rows = connection.execute(
        select(
            d.id, d.lead_id, d.flow, Lead.email, Lead.first_name, Lead.fields, Lead.tags, Lead.timezone,
            Event.properties.label("event"), StageEntry.cohort_at, StageEntry.channel, StageEntry.entered_at,
        )
        .select_from(d)
        .join(Lead, Lead.id == d.lead_id)
        .outerjoin(Enrollment, Enrollment.id == d.enrollment_id)
        .outerjoin(Event, Event.id == Enrollment.event_id)
        .outerjoin(StageEntry, and_(StageEntry.lead_id == d.lead_id, StageEntry.funnel == d.flow, StageEntry.position == 0))
        .where(among(connection, d.id, delivery_ids))
    ).all()
    deadlines: dict[tuple[int, str], dict[str, datetime]] = {}
    for lead_id, flow, name, due_at in connection.execute(
        select(Deadline.lead_id, Deadline.flow, Deadline.name, Deadline.due_at).where(among(connection, Deadline.lead_id, sorted({row.lead_id for row in rows})))
    ):
        deadlines.setdefault((lead_id, flow), {})[name] = due_at
    return {
        row.id: _Lead(
            lead_context(email=row.email, first_name=row.first_name, fields=dict(row.fields or {}), tags=list(row.tags or []), timezone=row.timezone),
            deadlines.get((row.lead_id, row.flow), {}), dict(row.event or {}),
            Cohort(row.cohort_at, row.channel, row.entered_at) if row.cohort_at is not None else None,
        )
        for row in rows
    }


@cache
def _claim_statement(only_if_allowed: bool = False) -> Update:
    """`queued` → `sending` for one delivery, returning it with what decides whether it may go:
    its lead's status and its enrollment's, read in the same statement.

    `only_if_allowed` claims only an email `domain.delivery.refusal` would let go (`_allowed`), so a
    statement that commits on its own never leaves a refused email `sending`.
    """
    d = Delivery
    now = bindparam("now", type_=UTCDateTime())
    enrollment = select(Enrollment.status).where(Enrollment.id == d.enrollment_id).scalar_subquery()
    end_reason = select(Enrollment.end_reason).where(Enrollment.id == d.enrollment_id).scalar_subquery()
    end_cause = select(Enrollment.end_cause).where(Enrollment.id == d.enrollment_id).scalar_subquery()
    conditions = [d.id == bindparam("delivery_id"), ready_to_send(now)] + ([_allowed()] if only_if_allowed else [])
    return (
        move(DeliveryStatus.QUEUED, DeliveryStatus.SENDING, on=d.__table__)
        .where(*conditions)
        .values(lease_until=bindparam("lease_until", type_=UTCDateTime()), attempts=d.attempts + 1)
        .returning(
            d.id, d.lead_id, d.flow, d.stage, d.step_id, d.kind, d.template, d.to_address, d.attempts,
            select(Lead.status).where(Lead.id == d.lead_id).scalar_subquery().label("lead_status"),
            enrollment.label("enrollment_status"), end_cause.label("end_cause"), end_reason.label("end_reason"),
            may_follow(d.lead_id, now).label("may_follow"),
        )
    )


def _allowed() -> ColumnElement[bool]:
    """`refusal(...) is None` in SQL, for the delivery being claimed, built from the rule's own tables.

    `domain.delivery.refusal` stays the rule: this only keeps a refused email queued,
    where the transaction that writes why finds it. A lead that cannot be found
    compares as NULL and refuses, as `refusal` does; a missing enrollment refuses
    nothing, as there.
    """
    d, e = Delivery, Enrollment
    lead_status = select(Lead.status).where(Lead.id == d.lead_id).scalar_subquery()
    closed = [e.status == status for status in CLOSED_ENROLLMENT]  # not IN: its list would be expanded at every run
    enrollment_refuses = select(e.id).where(
        e.id == d.enrollment_id,
        or_(*closed, e.end_cause == EndCause.SUPPRESSED),
    ).exists()
    lead_allows = or_(*(
        d.kind == kind if wanted is None else and_(d.kind == kind, lead_status == wanted)
        for kind, wanted in RECIPIENT_STATUS.items()
    ))
    return and_(lead_allows, ~enrollment_refuses)


def _claim_params(rt: Runtime, delivery_id: int) -> dict[str, Any]:
    """The lease starts when this attempt runs, not when a first attempt failed in an outage."""
    now = rt.clock.now()
    return {"delivery_id": delivery_id, "now": now, "lease_until": now + timedelta(seconds=rt.settings.delivery_lease)}


def _claim(batch: _Batch, delivery_id: int) -> _Claim | None:
    """Win the delivery or learn someone else has it, recording the pending outcome on the way."""
    rt, report, outcome = batch.rt, batch.report, batch.pending
    together = _recorded_with_claim(batch.held, outcome) if outcome is not None else None
    if together is not None:
        assert outcome is not None
        statement, record_params = together
        row = through_outage(
            lambda: batch.held.execute_alone(statement, _claim_params(rt, delivery_id) | record_params),
            for_seconds=_patience(rt), what="claiming an email",
        )
        batch.pending = None
        _bounce_and_count(batch, outcome, [_reported(outcome)])
        outcome = None
        if row is not None:
            reason = _refusal_of(row)
            if reason is None:
                return _claimed(batch, row)
            _count(report, batch.run(lambda connection: _refuse(connection, row, reason, rt.clock.now()), "skipping an email"))
            return None
        # Not claimed: taken meanwhile, or refused; the claim below says which, and why.

    def work(connection: Connection) -> tuple[_Claim | None, list[tuple[str, str]]]:
        recorded = _record(connection, outcome) if outcome is not None else []
        row = connection.execute(_claim_statement(), _claim_params(rt, delivery_id)).first()
        if row is None:
            return None, recorded
        reason = _refusal_of(row)
        if reason is not None:
            return None, recorded + _refuse(connection, row, reason, rt.clock.now())
        return _claimed(batch, row), recorded

    claim, recorded = batch.run(work, "claiming an email")
    batch.pending = None
    if outcome is not None:
        _bounce_and_count(batch, outcome, recorded)
    else:
        _count(report, recorded)
    return claim


def _refusal_of(row: Any) -> str | None:
    return refusal(row.kind, row.lead_status, row.enrollment_status, row.end_cause, row.end_reason)


def _refuse(connection: Connection, row: Any, reason: str, now: datetime) -> list[tuple[str, str]]:
    """A claimed email that must not go ends `skipped`, with why; what to report."""
    skipped = connection.execute(
        move(DeliveryStatus.SENDING, DeliveryStatus.SKIPPED, on=Delivery.__table__).where(Delivery.id == row.id)
        .values(reason=reason, lease_until=None, finished_at=now)
    ).rowcount
    if not skipped:
        return []
    write_timeline(connection, [timeline_row(row.lead_id, now, "skipped", reason, flow=row.flow, stage=row.stage, step_id=row.step_id)])
    return [("skipped", f"{row.to_address} {row.flow} {row.step_id}: skipped — {reason}")]


def _claimed(batch: _Batch, row: Any) -> _Claim:
    """The claimed email with what its template needs, read once for the batch."""
    lead = batch.leads.get(row.id) or _Lead(lead_context(email=row.to_address, first_name=None, fields={}, tags=[], timezone=None), {}, {}, None)
    cohort = lead.cohort
    if cohort is not None:
        cohort = Cohort(cohort.cohort_at, cohort.channel, cohort.entered_at, bool(row.may_follow))
    return _Claim(
        row.id, row.lead_id, row.flow, row.stage, row.step_id, row.kind, row.template, row.to_address, row.attempts,
        lead.lead, lead.deadlines, lead.event, cohort,
    )


def _record_alone(batch: _Batch) -> None:
    """The pending outcome in a transaction of its own, if there is one."""
    outcome = batch.pending
    if outcome is None:
        return
    recorded = batch.run(lambda connection: _record(connection, outcome), "recording an email's outcome")
    batch.pending = None
    _bounce_and_count(batch, outcome, recorded)


def _bounce_and_count(batch: _Batch, outcome: _Outcome, recorded: list[tuple[str, str]]) -> None:
    if outcome.hard_bounce:
        _suppress_bounced(batch.rt, outcome.claim)
    if outcome.reason.startswith(RENDER_FAILED) and any(status == "failed" for status, _ in recorded):
        log.error("%s/%s: %s", outcome.claim.flow, outcome.claim.template, outcome.reason)
        batch.report.render_failures.append(f"{outcome.claim.flow}/{outcome.claim.template}")
    _count(batch.report, recorded)


def _count(report: DeliveryReport, recorded: list[tuple[str, str]]) -> None:
    """Add what a transaction recorded to the report, once it committed."""
    for status, line in recorded:
        if status == "sent":
            report.sent += 1
        elif status == "failed":
            report.failed += 1
        elif status == "retry":
            report.retried += 1
        else:
            report.skipped += 1
        report.lines.append(line)


def _send(rt: Runtime, smtp: SmtpSession, claim: _Claim) -> _Outcome:
    """Build the email and hand it to SMTP; what happened, to be recorded."""
    now = rt.clock.now()
    flow = rt.project.flows.get(claim.flow)
    try:
        if flow is None:
            raise AutofunnelError(f"{claim.flow!r} is no longer in the project")
        message, sender, message_id = _compose(rt, claim, flow, now)
    except TemplateRenderError as exc:
        return _Outcome(claim, "failed", f"{RENDER_FAILED}: {exc}", rt.clock.now())
    except AutofunnelError as exc:
        return _Outcome(claim, "failed", f"could not build the email: {exc}", rt.clock.now())
    try:
        smtp.send(address_of(sender), claim.to_address, message)
    except DeliveryError as exc:
        return _failed_send(rt, claim, exc)
    return _Outcome(claim, "sent", "handed to the mail server", rt.clock.now(), message_id=message_id)


def _compose(rt: Runtime, claim: _Claim, flow: Flow, now: datetime) -> tuple[bytes, str, str]:
    """The message bytes, its sender and its Message-ID."""
    if claim.kind == "confirm":
        return _compose_confirmation(rt, claim, flow, now)
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

    context = email_context(
        lead=claim.lead, flow_slug=flow.slug, flow_title=flow.title, stage=claim.stage, event=claim.event,
        deadline=deadline, offer_url=offer_url, countdown_url=countdown_url, unsubscribe_url=unsubscribe_url,
        postal_address=rt.settings.postal_address,
    )
    rendered = rt.renderer.render(flow.slug, claim.template, context)
    sender = sender_of(rt.settings, flow)
    html = rendered.html
    headers: list[tuple[str, str]] = []
    if claim.kind == "email":
        html = rewrite_links(html, lambda url: f"{base}/t/c/{tokens.sign('click', [claim.id, url])}", keep={unsubscribe_url})
        if tracks_opens(rt.settings, flow):
            html = add_open_pixel(html, f"{base}/t/o/{tokens.sign('open', [claim.id])}")
        mailto = f"mailto:{address_of(sender)}?subject=unsubscribe"
        headers = [("List-Unsubscribe", f"<{unsubscribe_url}>, <{mailto}>"), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    domain = sender_domain(sender)
    message_id = message_id_for(claim.id, domain)
    message = build_message(
        sender=sender, to=format_address(claim.lead["first_name"] if claim.kind == "email" else None, claim.to_address), subject=rendered.subject, html=html, text=rendered.text,
        message_id=message_id, date=now, headers=headers, domain=domain,
    )
    return _signed(rt, message), sender, message_id


def _compose_confirmation(rt: Runtime, claim: _Claim, flow: Flow, now: datetime) -> tuple[bytes, str, str]:
    """A double opt-in email: no pixel, no tracked link, no List-Unsubscribe (there is nothing to leave yet)."""
    sender = sender_of(rt.settings, flow)
    rendered = render_confirmation(rt, claim.lead_id, flow, claim.lead, reminder=claim.step_id == REMINDER_STEP)
    domain = sender_domain(sender)
    message_id = message_id_for(claim.id, domain)
    message = build_message(
        sender=sender, to=format_address(claim.lead["first_name"], claim.to_address), subject=rendered.subject,
        html=rendered.html, text=rendered.text, message_id=message_id, date=now, domain=domain,
    )
    return _signed(rt, message), sender, message_id


def _signed(rt: Runtime, message: bytes) -> bytes:
    """DKIM-signed when AUTOFUNNEL_DKIM_* are set."""
    settings = rt.settings
    if rt.dkim_key is not None and dkim_ready(settings):  # half configured: warned at start (setup_checks)
        return sign_dkim(message, settings.dkim_domain, settings.dkim_selector, rt.dkim_key)
    return message


def _patience(rt: Runtime) -> float:
    """How long a worker waits for the database to come back: half a lease, so the
    sweep never calls an email interrupted while its worker is still trying to record it."""
    return rt.settings.delivery_lease / 2


@cache
def _finish_statement(sent: bool) -> Update:
    """`sending` → its outcome, returning whether a person opened or clicked it meanwhile (for the tallies)."""
    d = Delivery
    values: dict[str, Any] = {
        "reason": bindparam("finished_reason"), "lease_until": null(),
        "finished_at": bindparam("outcome_at", type_=UTCDateTime()),
    }
    if sent:
        values.update(sent_at=bindparam("outcome_at", type_=UTCDateTime()), message_id=bindparam("finished_message_id"))
    return (
        move(DeliveryStatus.SENDING, (DeliveryStatus.SENT, DeliveryStatus.FAILED), status=bindparam("finished_status"), on=d.__table__)
        .where(d.id == bindparam("finished_id")).values(**values)
        .returning(d.opened_at, d.clicked_at)
    )


@cache
def _record_and_claim_statement(sent: bool, tallied: bool) -> Update:
    """PostgreSQL: an email's record (`_finish_statement`, its timeline entry and, when
    `tallied`, its tally) and the next email's claim, as one statement.

    Data-modifying WITH clauses run in the statement's snapshot, like the
    statements they replace in one transaction; the two UPDATEs never touch the
    same row (the claim wants `queued`, the record `sending`). One round trip
    instead of four, which is most of what an email costs the database. Being
    one statement it commits on its own (`HeldConnection.execute_alone`), so its
    claim takes only an email allowed to go.
    """
    finished = _finish_statement(sent).cte("finished")
    t = TimelineEntry.__table__
    names = ["lead_id", "at", "flow", "stage", "step_id", "decision", "reason", "detail"]
    noted = insert(t).from_select(
        names, select(*(bindparam(f"noted_{name}", type_=t.c[name].type) for name in names)).select_from(finished)
    ).cte("noted")
    parts = [finished, noted] + ([sent_email_tally(finished).cte("tallied")] if tallied else [])
    return _claim_statement(only_if_allowed=True).add_cte(*parts)


def _recorded_with_claim(held: HeldConnection, outcome: _Outcome) -> tuple[Update, dict[str, Any]] | None:
    """The statement recording `outcome` while it claims the next email, and its parameters; None
    when the record takes statements of its own: on SQLite (no data-modifying WITH), for a
    retry, or for a sent email whose tally must look up what followed it."""
    claim = outcome.claim
    tallied = _tallied(outcome)
    if not held.is_postgres or outcome.status == "retry" or (tallied and claim.cohort is not None and claim.cohort.followed):
        return None
    params = _finish_params(outcome) | {f"noted_{name}": value for name, value in _timeline_entry(outcome).items()}
    if tallied:
        assert claim.cohort is not None
        params |= sent_email_tally_params(claim.flow, claim.cohort, claim.stage, claim.step_id)
    return _record_and_claim_statement(outcome.status == "sent", tallied), params


def _record(connection: Connection, outcome: _Outcome) -> list[tuple[str, str]]:
    """Write how a claimed email ended, if it is still this worker's to record; what to report."""
    claim, at = outcome.claim, outcome.at
    if outcome.status == "retry":
        assert outcome.retry_at is not None
        changed = connection.execute(
            move(DeliveryStatus.SENDING, DeliveryStatus.QUEUED, on=Delivery.__table__).where(Delivery.id == claim.id)
            .values(lease_until=outcome.retry_at, dispatched_at=None, reason=f"retrying after: {outcome.reason}"[:500])
        ).rowcount
        if changed:
            write_timeline(connection, [timeline_row(
                claim.lead_id, at, "retry", f"{outcome.reason}; retry at {outcome.retry_at.isoformat()}",
                flow=claim.flow, stage=claim.stage, step_id=claim.step_id,
            )])
        return [_reported(outcome)]
    row = connection.execute(_finish_statement(outcome.status == "sent"), _finish_params(outcome)).first()
    if row is not None:
        write_timeline(connection, [_timeline_entry(outcome)])
        if _tallied(outcome):
            assert claim.cohort is not None
            figures = ["sent"] + ["opened"] * (row.opened_at is not None) + ["clicked"] * (row.clicked_at is not None)
            count_sent_email(connection, claim.id, claim.lead_id, at, claim.flow, claim.cohort, claim.stage, claim.step_id, figures)
    return [_reported(outcome)]


def _reported(outcome: _Outcome) -> tuple[str, str]:
    claim = outcome.claim
    return outcome.status, f"{claim.to_address} {claim.flow} {claim.step_id}: {outcome.status} — {outcome.reason}"


def _finish_params(outcome: _Outcome) -> dict[str, Any]:
    return {
        "finished_id": outcome.claim.id, "finished_status": outcome.status, "finished_reason": outcome.reason[:500],
        "outcome_at": outcome.at, "finished_message_id": outcome.message_id,
    }


def _timeline_entry(outcome: _Outcome) -> dict[str, Any]:
    claim = outcome.claim
    return timeline_row(
        claim.lead_id, outcome.at, outcome.status, f"{claim.template}: {outcome.reason}",
        flow=claim.flow, stage=claim.stage, step_id=claim.step_id,
    )


def _tallied(outcome: _Outcome) -> bool:
    """Whether recording this outcome counts an email sent in the funnel's report."""
    claim = outcome.claim
    return outcome.status == "sent" and claim.kind == "email" and claim.cohort is not None and outcome.at >= claim.cohort.entered_at


def _failed_send(rt: Runtime, claim: _Claim, error: DeliveryError) -> _Outcome:
    """A refused or broken handoff: failed for good, or queued again after a back-off."""
    now = rt.clock.now()
    answer = f"{error.code} {error.text}".strip() if error.code else str(error)
    decided = after_failure(answer=answer, maybe_sent=error.maybe_sent, permanent=error.permanent, hard_bounce=error.hard_bounce,
                            kind=claim.kind, attempts=claim.attempts, now=now)
    if isinstance(decided, Retry):
        return _Outcome(claim, "retry", decided.reason, now, retry_at=decided.at)
    return _Outcome(claim, "failed", decided.reason, now, hard_bounce=decided.suppress)


def _suppress_bounced(rt: Runtime, claim: _Claim) -> None:
    """A recipient refused for good at SMTP time is a hard bounce: nothing more goes to it."""
    now = rt.clock.now()

    def suppress() -> None:
        with rt.db.transaction() as session:
            changed = session.execute(
                update(Lead).where(Lead.id == claim.lead_id, Lead.status == "active").values(status="bounced", status_changed_at=now, updated_at=now)
            ).rowcount
            if changed:
                end_enrollments(session, active_enrollment_ids(session, [claim.lead_id]), "exited", EndCause.SUPPRESSED, suppression_reason("bounced"), now)
                cancel_queued_for_leads(session, [claim.lead_id], "suppressed: lead bounced")
                write_timeline(session, [timeline_row(claim.lead_id, now, "status", "bounced: the mail server refused the address")])

    through_outage(suppress, for_seconds=_patience(rt), what="suppressing a bounced address")

