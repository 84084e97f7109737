"""Rows of the schedule: starting, ending and stopping enrollments, and the
timeline entries that say why. Shared by subscribe, record_events and tick,
always inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Update, bindparam, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from autofunnel.domain.engine import Cursor, Parked
from autofunnel.domain.model import EventMatcher, Flow
from autofunnel.domain.statuses import DeliveryStatus, EndCause, EnrollmentStatus
from autofunnel.store.delivery_moves import move
from autofunnel.store.models import ACTIVE_ENROLLMENTS, IN_FLIGHT_DELIVERIES, Delivery, Enrollment, TimelineEntry
from autofunnel.store.queries import Executor, among, among_param, bulk_insert, chunks, is_postgres
from autofunnel.store.types import UTCDateTime


def timeline_row(
    lead_id: int, at: datetime, decision: str, reason: str | None, *, flow: str | None = None,
    stage: str | None = None, step_id: str | None = None, detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "lead_id": lead_id, "at": at, "flow": flow, "stage": stage or None, "step_id": step_id,
        "decision": decision, "reason": (reason or "")[:500] or None, "detail": detail,
    }


def write_timeline(session: Executor, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        bulk_insert(session, TimelineEntry.__table__, rows)


def new_enrollment(
    lead_id: int, flow: Flow, stage: str, *, run: int, at: datetime, now: datetime, version_id: int | None,
    event_id: int | None,
) -> dict[str, Any]:
    """The row of a fresh stage or sequence run, due at once (or done if it has no steps)."""
    steps = flow.steps_of(stage)
    first = steps[0].id if steps else None
    return {
        "lead_id": lead_id, "flow": flow.slug, "kind": flow.kind, "stage": stage, "run": run,
        "step_id": first, "status": EnrollmentStatus.ACTIVE if first else EnrollmentStatus.DONE, "due_at": now if first else None,
        "waiting_for": None, "visits": {}, "entered_at": at, "ended_at": None if first else now,
        "end_cause": None if first else EndCause.FINISHED, "end_reason": None if first else "no steps", "version_id": version_id, "event_id": event_id,
    }


def end_enrollments(session: Session, ids: Iterable[int], status: str, cause: EndCause, reason: str, now: datetime) -> None:
    """End active enrollments and cancel their queued emails, in the caller's transaction.

    Cancelling here, where the stop is recorded, is what makes the delivery
    claim (`queued` → `sending`) the single place where send and stop race.
    """
    connection = _core(session)
    end, cancel, _ = _ending_statements(is_postgres(session))
    for part in chunks(list(ids), 500):
        connection.execute(end, {"ids": list(part), "status": status, "now": now, "cause": cause, "reason": reason[:200]})
        connection.execute(cancel, {"ids": list(part), "reason": f"cancelled: {reason}"[:500]})


def cancel_queued_for_leads(session: Session, lead_ids: Sequence[int], reason: str) -> int:
    """A suppressed lead gets nothing more: every queued email to it is skipped."""
    connection = _core(session)
    _, _, cancel = _ending_statements(is_postgres(session))
    count = 0
    for part in chunks(list(lead_ids), 500):
        count += connection.execute(cancel, {"ids": list(part), "reason": reason[:500]}).rowcount or 0
    return count


def _core(session: Session) -> Connection:
    """The transaction's connection, for Core statements, once what the session holds is flushed
    (what its own execute would do first). Through the session, an ORM UPDATE also looks for the
    rows it changes among the session's objects: ~1 ms more per call than the statements' run, and
    no caller holds an enrollment or an email as an object."""
    session.flush()
    return session.connection()


@cache
def _ending_statements(pg: bool) -> tuple[Update, Update, Update]:
    """Ending enrollments, cancelling their queued emails, cancelling a lead's: built once per backend,
    the ids (and the words) bound when they run."""
    reason = bindparam("reason")
    end = (
        update(Enrollment.__table__)
        .where(among_param(Enrollment.id, "ids", pg=pg), Enrollment.status == EnrollmentStatus.ACTIVE)
        .values(status=bindparam("status"), due_at=None, ended_at=bindparam("now", type_=UTCDateTime()), end_cause=bindparam("cause"), end_reason=reason)
    )
    cancel = (
        move(DeliveryStatus.QUEUED, DeliveryStatus.SKIPPED, on=Delivery.__table__)
        .where(among_param(Delivery.enrollment_id, "ids", pg=pg))
        .values(reason=reason, lease_until=None)
    )
    cancel_leads = (
        move(DeliveryStatus.QUEUED, DeliveryStatus.SKIPPED, on=Delivery.__table__)
        .where(among_param(Delivery.lead_id, "ids", pg=pg), Delivery.kind == "email")
        .values(reason=reason, lease_until=None)
    )
    return end, cancel, cancel_leads


def active_enrollment_ids(session: Session, lead_ids: Sequence[int]) -> list[int]:
    ids: list[int] = []
    for part in chunks(list(lead_ids), 500):
        ids.extend(session.scalars(select(Enrollment.id).where(among(session, Enrollment.lead_id, part), Enrollment.status == EnrollmentStatus.ACTIVE)))
    return ids


# The cursor <-> row mapping -----------------------------------------------------


def parked_to_json(parked: Parked | None) -> dict[str, Any] | None:
    if parked is None:
        return None
    data: dict[str, Any] = {"kind": parked.kind}
    if parked.matcher is not None:
        data["event"] = parked.matcher.event
        data["properties"] = dict(parked.matcher.properties)
    if parked.since is not None:
        data["since"] = parked.since.isoformat()
    return data


def parked_from_json(data: dict[str, Any] | None) -> Parked | None:
    if not data:
        return None
    matcher = EventMatcher(data["event"], data.get("properties") or {}) if data.get("event") else None
    since = datetime.fromisoformat(data["since"]) if data.get("since") else None
    return Parked(data["kind"], matcher, since)


def cursor_of(step_id: str | None, waiting_for: dict[str, Any] | None, visits: dict[str, Any] | None) -> Cursor:
    return Cursor(step_id, parked_from_json(waiting_for), dict(visits or {}))


def active_enrollment() -> ColumnElement[bool]:
    """Active, written as the partial indexes `ix_enrollments_due` and `ix_enrollments_waiting`
    are: only then can SQLite (and a generic PostgreSQL plan) tell that they hold the answer."""
    return text(f"{Enrollment.__tablename__}.{ACTIVE_ENROLLMENTS}")


def in_flight() -> ColumnElement[bool]:
    """Queued or sending, written as the partial index `ix_deliveries_in_flight` is, so SQLite
    finds those few rows through it: from a bound `status = ?` it cannot tell the index holds
    them, and read every email ever sent (1.3 s a sweep at 3.3 million, on every scheduler pass)."""
    return text(f"{Delivery.__tablename__}.{IN_FLIGHT_DELIVERIES}")


def ready_to_send(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """Queued and not waiting out a retry's back-off: what a worker may claim at `now`."""
    return in_flight() & (Delivery.status == DeliveryStatus.QUEUED) & (Delivery.lease_until.is_(None) | (Delivery.lease_until <= now))
