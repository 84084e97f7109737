"""`enrollments (flow, entered_at)` for sequence runs only: the admin home's starts per day.

The home page counts each sequence's runs started per day of the last 30. With no index
on when a run started, that count read every enrollment, funnel stages included: 0.28 s
of the page at a million leads on SQLite, with not one sequence run among them. The
index is partial, so a funnel's enrollments (most of the table) cost nothing to keep it.

Revision ID: 0018_sequence_starts_index
Revises: 0017_email_prefix_index
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_sequence_starts_index"
down_revision: str | Sequence[str] | None = "0017_email_prefix_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQUENCE_RUNS = "kind = 'sequence'"


def upgrade() -> None:
    op.create_index(
        "ix_enrollments_sequence_starts", "enrollments", ["flow", "entered_at"],
        postgresql_where=sa.text(SEQUENCE_RUNS), sqlite_where=sa.text(SEQUENCE_RUNS),
    )


def downgrade() -> None:
    op.drop_index("ix_enrollments_sequence_starts", table_name="enrollments")
