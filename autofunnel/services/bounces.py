"""An address the mail server refused for good, while sending: the lead is suppressed at once
(bounced), its enrollments end and nothing more is queued for it — before the batch claims
anything else. Bounces reported later by a relay's webhook take the event path instead
(`domain.routing`)."""

from __future__ import annotations

from sqlalchemy import update

from autofunnel.domain.engine import suppression_reason
from autofunnel.domain.statuses import EndCause, EnrollmentStatus, LeadStatus
from autofunnel.services.database import through_outage
from autofunnel.services.enrollments import active_enrollment_ids, cancel_queued_for_leads, end_enrollments, timeline_row, write_timeline
from autofunnel.services.runtime import Runtime
from autofunnel.store.models import Lead


def suppress_bounced(rt: Runtime, lead_id: int, *, patience: float) -> None:
    """A recipient refused for good at SMTP time is a hard bounce: nothing more goes to it."""
    now = rt.clock.now()

    def suppress() -> None:
        with rt.db.transaction() as session:
            changed = session.execute(
                update(Lead).where(Lead.id == lead_id, Lead.status == LeadStatus.ACTIVE).values(status=LeadStatus.BOUNCED, status_changed_at=now, updated_at=now)
            ).rowcount
            if changed:
                end_enrollments(session, active_enrollment_ids(session, [lead_id]), EnrollmentStatus.EXITED, EndCause.SUPPRESSED, suppression_reason("bounced"), now)
                cancel_queued_for_leads(session, [lead_id], "suppressed: lead bounced")
                write_timeline(session, [timeline_row(lead_id, now, "status", "bounced: the mail server refused the address")])

    through_outage(suppress, for_seconds=patience, what="suppressing a bounced address")
