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
from typing import Any, TypeVar

from sqlalchemy import Update
from sqlalchemy.engine import Connection

from autofunnel.domain.delivery import Retry, after_failure, refusal
from autofunnel.domain.model import Flow
from autofunnel.domain.statuses import DeliveryStatus
from autofunnel.errors import AutofunnelError
from autofunnel.mail.compose import Letter, Sending, compose_confirmation, compose_email
from autofunnel.mail.message import sign_dkim
from autofunnel.mail.render import TemplateRenderError
from autofunnel.mail.templates import lead_context
from autofunnel.mail.transport import DeliveryError, Session as SmtpSession, Transport
from autofunnel.services.bounces import suppress_bounced
from autofunnel.services.database import through_outage
from autofunnel.services.delivery_statements import LeadDetails, claim_statement, finish_statement, mark_taken, read_leads, record_and_claim_statement
from autofunnel.services.enrollments import timeline_row, write_timeline
from autofunnel.services.leads import REMINDER_STEP
from autofunnel.services.optin import render_confirmation
from autofunnel.services.runtime import Runtime
from autofunnel.services.senders import address_of, dkim_ready, sender_domain, sender_of, tracks_opens
from autofunnel.services.tallies import Cohort, count_sent_email, sent_email_tally_params
from autofunnel.store.db import HeldConnection
from autofunnel.store.delivery_moves import move
from autofunnel.store.models import Delivery

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
        self.leads: dict[int, LeadDetails] = {}
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
        ready, batch.leads = batch.run(lambda connection: _take(connection, rt.clock.now(), delivery_ids), "taking a batch")
        if not ready:
            return report
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


def _take(connection: Connection, now: datetime, delivery_ids: Sequence[int]) -> tuple[list[int], dict[int, LeadDetails]]:
    """The batch's emails still to send, and what their templates need, in one transaction: a
    batch is often a pass's one or two emails, and a commit of its own cost more than the read."""
    ready = mark_taken(connection, now, delivery_ids)
    return ready, read_leads(connection, ready) if ready else {}


def _record_on_the_way_out(batch: _Batch) -> None:
    """A sent email whose record was to go with the next claim, when that claim failed: its
    record alone, so it ends `sent`, not `interrupted`; the error that stopped the batch wins."""
    outcome = batch.pending
    try:
        _record_alone(batch)
    except Exception:
        assert outcome is not None
        log.exception("could not record %s to %s; the sweep will mark it interrupted", outcome.status, outcome.claim.to_address)


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
        row = connection.execute(claim_statement(), _claim_params(rt, delivery_id)).first()
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
    lead = batch.leads.get(row.id) or LeadDetails(lead_context(email=row.to_address, first_name=None, fields={}, tags=[], timezone=None), {}, {}, None)
    cohort = lead.cohort
    if cohort is not None:
        cohort = Cohort(cohort.cohort_at, cohort.channel, cohort.entered_at, cohort.lead_split, bool(row.may_follow))
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
        suppress_bounced(batch.rt, outcome.claim.lead_id, patience=_patience(batch.rt))
    if outcome.reason.startswith(RENDER_FAILED) and any(status == DeliveryStatus.FAILED for status, _ in recorded):
        log.error("%s/%s: %s", outcome.claim.flow, outcome.claim.template, outcome.reason)
        batch.report.render_failures.append(f"{outcome.claim.flow}/{outcome.claim.template}")
    _count(batch.report, recorded)


def _count(report: DeliveryReport, recorded: list[tuple[str, str]]) -> None:
    """Add what a transaction recorded to the report, once it committed."""
    for status, line in recorded:
        if status == DeliveryStatus.SENT:
            report.sent += 1
        elif status == DeliveryStatus.FAILED:
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
    """The message bytes (DKIM-signed when configured), its sender and its Message-ID."""
    sender = sender_of(rt.settings, flow)
    sending = Sending(
        base_url=rt.settings.base_url, tokens=rt.tokens, sender=sender, sender_address=address_of(sender),
        sender_domain=sender_domain(sender), track_opens=tracks_opens(rt.settings, flow), postal_address=rt.settings.postal_address,
    )
    letter = Letter(
        delivery_id=claim.id, lead_id=claim.lead_id, kind=claim.kind, stage=claim.stage, template=claim.template,
        to_address=claim.to_address, lead=claim.lead, event=claim.event, deadlines=claim.deadlines,
    )
    if claim.kind == "confirm":
        rendered = render_confirmation(rt, claim.lead_id, flow, claim.lead, reminder=claim.step_id == REMINDER_STEP)
        message, message_id = compose_confirmation(letter, rendered, sending, now)
    else:
        message, message_id = compose_email(letter, flow, rt.renderer, sending, now)
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
        params |= sent_email_tally_params(claim.flow, claim.cohort, outcome.at, claim.stage, claim.step_id)
    return record_and_claim_statement(outcome.status == DeliveryStatus.SENT, tallied), params


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
    row = connection.execute(finish_statement(outcome.status == DeliveryStatus.SENT), _finish_params(outcome)).first()
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
    return outcome.status == DeliveryStatus.SENT and claim.kind == "email" and claim.cohort is not None and outcome.at >= claim.cohort.entered_at


def _failed_send(rt: Runtime, claim: _Claim, error: DeliveryError) -> _Outcome:
    """A refused or broken handoff: failed for good, or queued again after a back-off."""
    now = rt.clock.now()
    answer = f"{error.code} {error.text}".strip() if error.code else str(error)
    decided = after_failure(answer=answer, maybe_sent=error.maybe_sent, permanent=error.permanent, hard_bounce=error.hard_bounce,
                            kind=claim.kind, attempts=claim.attempts, now=now)
    if isinstance(decided, Retry):
        return _Outcome(claim, "retry", decided.reason, now, retry_at=decided.at)
    return _Outcome(claim, "failed", decided.reason, now, hard_bounce=decided.suppress)
