"""What the engine and the emails know about a lead, read in one place for many leads at once.

The scheduler (to decide steps), the sending batch (to fill templates), the preview and
the lead view all need a lead's personal deadlines; they read them here, one query for
the whole batch, so a change in how deadlines are stored is one change.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select

from autofunnel.store.models import Deadline
from autofunnel.store.queries import Executor, among


def deadlines_of(executor: Executor, lead_ids: Iterable[int]) -> dict[tuple[int, str], dict[str, datetime]]:
    """(lead, flow) → deadline name → when it falls due, for every deadline these leads have."""
    found: dict[tuple[int, str], dict[str, datetime]] = defaultdict(dict)
    for lead_id, flow, name, due_at in executor.execute(
        select(Deadline.lead_id, Deadline.flow, Deadline.name, Deadline.due_at).where(among(executor, Deadline.lead_id, sorted(set(lead_ids))))  # type: ignore[arg-type]
    ):
        found[(lead_id, flow)][name] = due_at
    return found
