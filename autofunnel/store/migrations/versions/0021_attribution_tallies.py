"""Attribution kept in the report's tallies: each purchase's shares by channel and by email.

`attribution=…` counted every purchase's touches from the stored facts: 15 s for
the last 30 days at a million leads on SQLite. The tallies now keep, per funnel
and day, each touch's place among its purchase's touches with the net amount
(the rank-based models) and its time-decay share; no column changes. The
purchases stored before this version have no such rows, so `tally_state` asks
for a recount: until `autofunnel report-recount` has run, reports count the
stored facts (correct, slower). A database with no purchase yet needs none.

Revision ID: 0021_attribution_tallies
Revises: 0020_calendar_tallies
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0021_attribution_tallies"
down_revision: str | Sequence[str] | None = "0020_calendar_tallies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIGURES = "('attributed_channel', 'decayed_channel', 'attributed_email', 'decayed_email')"


def upgrade() -> None:
    op.execute("UPDATE tally_state SET recount_needed = TRUE WHERE EXISTS (SELECT 1 FROM events WHERE type = 'purchase')")


def downgrade() -> None:
    op.execute(f"DELETE FROM cohort_tallies WHERE figure IN {FIGURES}")
