"""Claiming what is due: the enrollments whose time has come, oldest first, a batch at a time.

Claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL, so any number of schedulers
can run at once without taking the same lead; the cost of a claim is what is due
(the partial index on active rows' `due_at`), not every lead.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from autofunnel.domain.statuses import EnrollmentStatus
from autofunnel.store.models import Enrollment
from autofunnel.store.queries import is_postgres
from autofunnel.store.types import UTCDateTime


def claim_due(session: Session, now: datetime, batch: int) -> list[Any]:
    """The due enrollments, read on the session's connection (a pass's first statement, so nothing
    waits to be flushed): the ORM's execution path cost more than this Core query's run."""
    return list(session.connection().execute(_claim_statement(is_postgres(session)), {"now": now, "batch": batch}))


@functools.cache
def _claim_statement(postgres: bool) -> Any:
    """Built once per backend: every pass runs it at least twice (the last batch finds none)."""
    stmt = (
        select(
            Enrollment.id, Enrollment.lead_id, Enrollment.flow, Enrollment.kind, Enrollment.stage, Enrollment.step_id,
            Enrollment.waiting_for, Enrollment.visits, Enrollment.version_id, Enrollment.due_at, Enrollment.history,
        )
        .where(Enrollment.status == EnrollmentStatus.ACTIVE, Enrollment.due_at <= bindparam("now", type_=UTCDateTime()))
        .order_by(Enrollment.due_at)
        .limit(bindparam("batch"))
    )
    if postgres:
        stmt = stmt.with_for_update(skip_locked=True, of=Enrollment)
    return stmt
