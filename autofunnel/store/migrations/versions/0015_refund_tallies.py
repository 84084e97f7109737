"""Report tallies that count refunds and the revenue of purchases after each email.

The tallies written before this version have no `refunded`, `refunded_orders` or
`refunds_7d` rows and no amount on `purchases_7d`, so a report added up from them
would show gross revenue and no `revenue_7d`. `tally_state` records that they must
be counted again: while `recount_needed` is true the report counts the stored facts
(correct, slower), and `autofunnel report recount` recounts the tallies and clears
it. A database with no purchase yet needs no recount.

Revision ID: 0015_refund_tallies
Revises: 0014_step_texts
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_refund_tallies"
down_revision: str | Sequence[str] | None = "0014_step_texts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tally_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recount_needed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tally_state")),
    )
    op.execute(
        "INSERT INTO tally_state (id, recount_needed) "
        "SELECT 1, EXISTS (SELECT 1 FROM events WHERE type IN ('purchase', 'refund'))"
    )


def downgrade() -> None:
    op.drop_table("tally_state")
