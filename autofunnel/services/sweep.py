"""The sweep: delivery work the broker lost, found again on every scheduler pass.

Emails are handed to the broker after their commit; a broker can lose them, and a
worker can die between claiming an email and recording it. The sweep hands the
lost ones out again and ends the interrupted ones, so nothing waits for ever and
nothing is sent twice.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update

from autofunnel.services.enrollments import in_flight, ready_to_send, timeline_row, write_timeline
from autofunnel.services.runtime import Runtime
from autofunnel.domain.statuses import DeliveryStatus
from autofunnel.store.delivery_moves import move
from autofunnel.store.models import Delivery
from autofunnel.store.types import UTCDateTime


@dataclass
class SweepResult:
    retries: list[int]
    """Emails whose back-off ended: new work, handed out now."""
    lost: list[int]
    """Emails handed out longer than a lease ago and still queued: the broker lost them."""
    interrupted: int


def sweep(rt: Runtime, *, now: datetime | None = None, broker_empty: bool = True) -> SweepResult:
    """Find delivery work the broker lost: queued rows to hand out again, and
    `sending` rows whose worker died, which end `failed: interrupted` (never re-sent).

    An email still waiting behind others in the broker looks exactly like a lost
    one, so lost work is handed out again when the broker's queue is empty
    (`broker_empty`), or, whatever the queue holds, once it has waited
    STALE_AFTER_LEASES leases (a queue that never empties, or whose depth cannot be
    read, must not hold lost work back for ever); a duplicate is harmless (the claim
    decides, and a worker drops a copy's already-sent emails in one statement).
    Every id returned is stamped `dispatched_at = now` in the same transaction, so two
    schedulers sweeping at once never hand out the same email twice.
    """
    now = now or rt.clock.now()
    lease = timedelta(seconds=rt.settings.delivery_lease)
    waited = lease if broker_empty else lease * STALE_AFTER_LEASES
    interrupt, hand_out_new, hand_out_lost, anything = _sweep_statements()
    # Nearly every pass finds nothing: a read says so without taking SQLite's write lock, which
    # the three UPDATEs would hold against every other writer even when they change no row.
    # Work that turns up after this look is found by the next pass.
    # The statements are Core's, run on the session's connection: the ORM's execution path added
    # ~55 µs to each, and these sessions hold no ORM objects to flush or keep in step.
    with rt.db.look() as connection:
        if connection.execute(anything, {"now": now, "handed_before": now - waited}).first() is None:
            return SweepResult([], [], 0)
    with rt.db.transaction() as session:
        connection = session.connection()
        interrupted = connection.execute(interrupt, {"now": now}).all()
        write_timeline(connection, [
            timeline_row(row.lead_id, now, "failed", "interrupted", flow=row.flow, stage=row.stage, step_id=row.step_id)
            for row in interrupted
        ])
        retries = sorted(connection.scalars(hand_out_new, {"now": now}))
        lost = sorted(connection.scalars(hand_out_lost, {"now": now, "handed_before": now - waited}))
    return SweepResult(retries, lost, len(interrupted))


@functools.cache
def _sweep_statements() -> tuple[Any, Any, Any, Any]:
    """The sweep's three statements and the look that says whether any has work, built once: it
    runs on every scheduler pass, and building SQLAlchemy statements cost more than running them
    (a simulation makes thousands of passes)."""
    now = bindparam("now", type_=UTCDateTime())
    interrupted = (Delivery.status == DeliveryStatus.SENDING) & (Delivery.lease_until < now)
    interrupt = (
        move(DeliveryStatus.SENDING, DeliveryStatus.FAILED, on=Delivery.__table__)
        .where(in_flight(), Delivery.lease_until < now)
        .values(reason=INTERRUPTED, lease_until=None, finished_at=now)
        .returning(Delivery.id, Delivery.lead_id, Delivery.flow, Delivery.stage, Delivery.step_id)
    )
    ready = ready_to_send(now)
    new = ready & Delivery.dispatched_at.is_(None)
    lost = ready & (Delivery.dispatched_at <= bindparam("handed_before", type_=UTCDateTime()))
    anything = select(Delivery.id).where(in_flight(), or_(interrupted, new, lost)).limit(1)
    return interrupt, _hand_out_statement(new, now), _hand_out_statement(lost, now), anything


STALE_AFTER_LEASES = 10

INTERRUPTED = "interrupted: the worker stopped between claiming the email and recording it; not sent again"


def _hand_out_statement(condition: Any, now: Any) -> Any:
    return update(Delivery.__table__).where(condition).values(dispatched_at=now).returning(Delivery.id)
