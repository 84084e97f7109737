"""Counting the report's tallies again from the stored facts (`autofunnel report-recount`).

Needed once after an upgrade that adds figures to the tallies (migration 0015: refunds
and `revenue_7d`); until then the report counts the facts. One transaction: on
PostgreSQL a REPEATABLE READ snapshot, so a fact written meanwhile is counted once —
by the recount if the snapshot has it, else by its own tally row (see `rebuild_tallies`).
"""

from __future__ import annotations

from collections.abc import Callable

from autofunnel.services.runtime import Runtime
from autofunnel.services.tallies import recount_tallies
from autofunnel.store.queries import is_postgres

RECOUNT_PARTS = 4
"""How many parts `recount_tallies` announces: stage entries, emails, events, folding."""


def recount(rt: Runtime, progress: Callable[[str], None] = lambda _: None) -> None:
    """Replace every tally with a recount and mark the tallies current."""
    with rt.db.transaction() as session:
        if is_postgres(session):
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        recount_tallies(session, progress)
