"""Reports: the ad spend table, and the indexes the report's queries read through.

- `spend`: ad spend per channel, day and currency (cost per lead, per customer, return on spend).
- `deliveries (flow, sent_at)`: per-email results of one funnel, by the day they were sent.
- `assignments (flow, name)`: a funnel's holdout and A/B picks without scanning every funnel's.

Revision ID: 0003_reports
Revises: 0002_dispatch
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_reports"
down_revision: str | Sequence[str] | None = "0002_dispatch"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "spend",
        sa.Column("id", ID, nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("updated_at", MOMENT, nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_spend_amount")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spend")),
        sa.UniqueConstraint("channel", "day", "currency", name=op.f("uq_spend_channel_day_currency")),
    )
    op.create_index(op.f("ix_deliveries_flow_sent_at"), "deliveries", ["flow", "sent_at"])
    op.create_index(op.f("ix_assignments_flow_name"), "assignments", ["flow", "name"])


def downgrade() -> None:
    op.drop_index(op.f("ix_assignments_flow_name"), table_name="assignments")
    op.drop_index(op.f("ix_deliveries_flow_sent_at"), table_name="deliveries")
    op.drop_table("spend")
