"""Report tallies kept by lead split: owner, segment and region.

A writer's tally row now carries its leads' values of those (`lead_split`, a JSON
object) and the fold files it under its channel and under each split and value
(`split`, `split_value`), so a report by owner adds up a few rows per owner. The
rows written before this version carry none: `tally_state.splits_needed` records
that the split figures are still to be counted. Until `autofunnel report recount`
has run, the reports split by owner, segment or region count the stored facts
(correct, slower), and every other report reads the tallies as before. A database
with no stage entry yet needs no recount.

The index the reports read the tallies by names the split before the day, so a
report by channel reads only the channel rows of its days (the split rows are three
times as many: after the day, PostgreSQL read them all, +40 ms a report at 1M leads).

Revision ID: 0023_lead_split_tallies
Revises: 0022_unmatched_refund_tallies
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023_lead_split_tallies"
down_revision: str | Sequence[str] | None = "0022_unmatched_refund_tallies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("cohort_tallies", sa.Column("lead_split", sa.String(), server_default=sa.text("''"), nullable=False))
    op.add_column("cohort_tallies", sa.Column("split", sa.String(length=40), server_default=sa.text("''"), nullable=False))
    op.add_column("cohort_tallies", sa.Column("split_value", sa.String(), server_default=sa.text("''"), nullable=False))
    op.drop_index("ix_cohort_tallies_funnel_cohort_day", table_name="cohort_tallies")
    op.create_index("ix_cohort_tallies_funnel_split_day", "cohort_tallies", ["funnel", "split", "cohort_day"])
    op.add_column("tally_state", sa.Column("splits_needed", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute("UPDATE tally_state SET splits_needed = EXISTS (SELECT 1 FROM stage_entries)")


def downgrade() -> None:
    op.execute("DELETE FROM cohort_tallies WHERE split <> ''")
    op.drop_column("tally_state", "splits_needed")
    op.drop_index("ix_cohort_tallies_funnel_split_day", table_name="cohort_tallies")
    op.create_index("ix_cohort_tallies_funnel_cohort_day", "cohort_tallies", ["funnel", "cohort_day"])
    op.drop_column("cohort_tallies", "split_value")
    op.drop_column("cohort_tallies", "split")
    op.drop_column("cohort_tallies", "lead_split")
