"""Whether a claimed email may still go, and what a failed handoff leads to: the sending
path's decisions as values, with no database and no SMTP.

The rule is data first (`RECIPIENT_STATUS`, `CLOSED_ENROLLMENT`, and `EndCause.SUPPRESSED`
for enrollments ended by their lead's suppression),
so the claim's SQL check (`services.delivery_statements.allowed`) is generated from the same table
that `refusal` reads, and a test holds the two to agree on every combination of statuses and end causes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from autofunnel.domain.engine import ended_by_suppression
from autofunnel.domain.statuses import EnrollmentStatus, LeadStatus

RECIPIENT_STATUS: Final[dict[str, LeadStatus | None]] = {"email": LeadStatus.ACTIVE, "confirm": LeadStatus.PENDING, "notify": None}
"""A delivery's kind → the one lead status it may go to; None: any (a notify goes to the seller's side)."""

CLOSED_ENROLLMENT: Final[dict[EnrollmentStatus, str]] = {EnrollmentStatus.ENDED: "stage ended", EnrollmentStatus.STOPPED: "sequence stopped"}
"""Enrollment statuses whose emails never go, whatever the lead → how the skip is worded."""

MAX_ATTEMPTS: Final = 5
RETRY_AFTER: Final = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1))
"""Back-off after a temporary (4xx) SMTP answer; after MAX_ATTEMPTS the delivery fails."""


def refusal(kind: str, lead_status: str | None, enrollment_status: str | None, end_cause: str | None, end_reason: str | None) -> str | None:
    """Why this email must not go now, or None; `enrollment_status` None: it belongs to no enrollment."""
    wanted = RECIPIENT_STATUS.get(kind)
    if wanted is not None and lead_status != wanted:
        if kind == "confirm":  # the one email a pending lead may get, and only while pending
            return "not needed: lead already confirmed" if lead_status == LeadStatus.ACTIVE else f"suppressed: lead {lead_status}"
        return "suppressed: lead not confirmed yet" if lead_status == LeadStatus.PENDING else f"suppressed: lead {lead_status}"
    if enrollment_status in CLOSED_ENROLLMENT:
        return f"{CLOSED_ENROLLMENT[enrollment_status]}: {end_reason}"
    if enrollment_status is not None and ended_by_suppression(end_cause):
        return f"suppressed: {end_reason}"
    return None


@dataclass(frozen=True)
class Retry:
    at: datetime
    reason: str


@dataclass(frozen=True)
class Fail:
    reason: str
    suppress: bool = False
    """A hard bounce of a marketing email: the lead is suppressed for good."""


def after_failure(
    *, answer: str, maybe_sent: bool, permanent: bool, hard_bounce: bool, kind: str, attempts: int, now: datetime,
) -> Retry | Fail:
    """What a handoff SMTP refused or broke off leads to: never again when it may have been taken
    (at most once wins), failed for good on a permanent answer or the last attempt, else a retry
    after the back-off for this attempt."""
    if maybe_sent:
        return Fail(f"interrupted: the server may have taken it ({answer}); not sent again")
    if permanent or attempts >= MAX_ATTEMPTS:
        return Fail(answer, suppress=hard_bounce and kind == "email")
    return Retry(now + RETRY_AFTER[min(attempts, len(RETRY_AFTER)) - 1], answer)
