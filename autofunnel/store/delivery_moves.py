"""The one way a delivery's status changes in the database: `move`, checked against the
domain's `DELIVERY_MOVES` and guarded by its from-status in the WHERE, so a worker that
lost its lease, or a cancel racing a claim, changes nothing (rowcount 0) instead of
moving an email backwards."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, Update, update

from autofunnel.domain.statuses import DeliveryStatus, require_move
from autofunnel.store.models import Delivery


def move(
    before: DeliveryStatus, after: DeliveryStatus | tuple[DeliveryStatus, ...], *, status: Any = None, on: Any = Delivery,
) -> Update:
    """UPDATE deliveries SET status = `after` WHERE status = `before`; the caller adds its own
    WHERE (which deliveries) and values (reason, lease, times). With several `after`s the
    statement binds the one it writes as `status` (a bindparam), each of them checked here.
    `on`: the mapped class (an ORM update, the session kept in step) or its table (Core)."""
    targets = after if isinstance(after, tuple) else (after,)
    for target in targets:
        require_move(before, target)
    if status is None:
        if len(targets) != 1:
            raise ValueError("several statuses to move to: give the one written as status=")
        status = targets[0]
    column = on.c.status if isinstance(on, Table) else on.status
    return update(on).where(column == before).values(status=status)
