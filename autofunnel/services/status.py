"""Is the system doing its job? `/healthz` and `autofunnel status` read it here.

Up is not enough: a Celery worker can stay connected and consume nothing after a
broker reconnect (celery#8091), and a web process answers while no scheduler
runs. So besides "database and broker answer", the work itself is checked:
emails or steps overdue by more than two leases while no email was sent or
failed at the server within a lease means nobody is working, however healthy
every process looks (skips and the sweep's own `interrupted` marks are not work).
And an email whose template failed to render in the last hour is work that
cannot be done until someone fixes the template: it fails `work` as well.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from autofunnel.domain.statuses import DeliveryStatus
from autofunnel.errors import AutofunnelError
from autofunnel.services.broker import broker_problem, queue_depth
from autofunnel.services.delivery import RENDER_FAILED
from autofunnel.services.enrollments import active_enrollment, ready_to_send
from autofunnel.services.runtime import Runtime
from autofunnel.store.models import Delivery, Enrollment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkStatus:
    queue_depth: int | None
    """Delivery batches waiting in the broker; None when the broker cannot say."""
    due_now: int
    """Steps whose time has come plus emails ready to be sent."""
    oldest_due_age_s: float | None
    sent_last_minute: int
    sent_last_hour: int
    failed_last_minute: int
    failed_last_hour: int
    stalled: str | None
    """Why work looks abandoned, or None."""
    render_failed: str | None = None
    """Emails whose template did not render in the last hour, and which templates; or None."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def work_status(rt: Runtime, *, broker_depth: int | None) -> WorkStatus:
    """What is due, how late it is, and what finished recently: a few index lookups."""
    now = rt.clock.now()
    ready = ready_to_send(now)
    with rt.db.read() as session:
        # The partial index's own predicate, written out, so that SQLite uses it (a bound
        # `status = ?` cannot tell it the index holds the rows): at a million leads this count
        # read the whole table, 3.0 s of the admin's home page (`ready_to_send` does the same).
        steps_due, oldest_step = session.execute(
            select(func.count(), func.min(Enrollment.due_at)).where(active_enrollment(), Enrollment.due_at <= now)
        ).one()
        emails_due, oldest_email = session.execute(
            select(func.count(), func.min(func.coalesce(Delivery.lease_until, Delivery.created_at))).where(ready)
        ).one()
        finished = {
            (status, window): count
            for window, since in (("minute", now - timedelta(minutes=1)), ("hour", now - timedelta(hours=1)))
            for status, count in session.execute(
                select(Delivery.status, func.count()).where(Delivery.finished_at > since).group_by(Delivery.status)
            )
        }
        lease = timedelta(seconds=rt.settings.delivery_lease)
        recent = session.scalar(
            select(func.count()).where(
                Delivery.finished_at > now - lease, Delivery.status.in_((DeliveryStatus.SENT, DeliveryStatus.FAILED)),
                Delivery.reason.is_(None) | Delivery.reason.not_like("interrupted%"),
            )
        ) or 0
        # Counted here rather than by GROUP BY flow: SQLite answered that by walking the
        # (flow, sent_at) index, every email ever sent (12.7 s at a million leads), instead of
        # the last hour's few finished ones.
        broken: Counter[tuple[str, str]] = Counter((row.flow, row.template) for row in session.execute(
            select(Delivery.flow, Delivery.template)
            .where(Delivery.finished_at > now - timedelta(hours=1), Delivery.status == DeliveryStatus.FAILED, Delivery.reason.like(f"{RENDER_FAILED}%"))
        ))
    render_failed = None
    if broken:
        count = sum(broken.values())
        names = ", ".join(f"{flow}/{template}" for flow, template in sorted(broken))
        render_failed = f"{count} email(s) failed to render in the last hour: template {names} (see the leads' timelines; run `autofunnel validate`)"
    oldest = min((moment for moment in (oldest_step, oldest_email) if moment is not None), default=None)
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
    stalled = None
    if age is not None and age > lease.total_seconds() * 2 and not recent:
        stalled = f"work due {age:.0f} s ago and nothing finished in the last {lease.total_seconds():.0f} s: is a scheduler and a worker running?"
    return WorkStatus(
        queue_depth=broker_depth, due_now=steps_due + emails_due, oldest_due_age_s=round(age, 1) if age is not None else None,
        sent_last_minute=finished.get(("sent", "minute"), 0), sent_last_hour=finished.get(("sent", "hour"), 0),
        failed_last_minute=finished.get(("failed", "minute"), 0), failed_last_hour=finished.get(("failed", "hour"), 0),
        stalled=stalled, render_failed=render_failed,
    )


@dataclass(frozen=True)
class Health:
    database: str
    broker: str
    work: str
    status_code: int

    @property
    def failing(self) -> str | None:
        return next((part for part in ("database", "broker", "work") if getattr(self, part) != "ok"), None)


def health(rt: Runtime) -> Health:
    """The database and the broker answer, and due work is being done."""
    broker_answer = broker_problem(rt.broker)
    database = "ok"
    work = "ok"
    try:
        with rt.db.read() as session:
            session.execute(text("SELECT 1"))
    except (SQLAlchemyError, AutofunnelError):
        log.exception("health check: the database did not answer")
        database = "unavailable"
    if database == "ok":
        try:
            status = work_status(rt, broker_depth=None)
            work = status.stalled or status.render_failed or "ok"
        except SQLAlchemyError:
            log.exception("health check: the work status could not be read")
            work = "unknown"
    if broker_answer is not None:
        log.warning("health check: the broker did not answer: %s", broker_answer)
    broker_text = "ok" if broker_answer is None else f"unavailable: {broker_answer}"
    healthy = database == broker_text == work == "ok"
    return Health(database, broker_text, work, 200 if healthy else 503)


def system_status(rt: Runtime) -> tuple[str, WorkStatus]:
    """(broker description, work status) for `autofunnel status`."""
    broker = rt.broker
    try:
        depth: int | None = queue_depth(broker)
    except Exception as exc:  # a broker that does not answer has no depth to show
        log.warning("cannot read the queue depth: %s", exc)
        depth = None
    return broker.describe(), work_status(rt, broker_depth=depth)
