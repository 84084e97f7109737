"""Running for real: when an email was handed to the queue, when it finished, and the shared send pace.

`dispatched_at` lets the scheduler tell an email waiting in the broker from one
the broker lost; `finished_at` (indexed) answers "sent and failed in the last
minute and hour" without scanning every delivery; `send_pace` holds the next
free sending slot when AUTOFUNNEL_SEND_RATE is kept in the database.

Revision ID: 0002_dispatch
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_dispatch"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("dispatched_at", MOMENT, nullable=True))
        batch.add_column(sa.Column("finished_at", MOMENT, nullable=True))
        batch.create_index("ix_deliveries_finished_at", ["finished_at"])
    op.create_table(
        "send_pace",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("next_free_at", MOMENT, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_send_pace"),
    )


def downgrade() -> None:
    op.drop_table("send_pace")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_finished_at")
        batch.drop_column("finished_at")
        batch.drop_column("dispatched_at")
