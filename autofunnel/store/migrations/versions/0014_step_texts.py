"""Each flow version keeps its steps in words, so `validate --plan` can name the steps an edit
changes under the same id (a wait's duration, a send's template or condition) and how they read
before. Versions recorded earlier keep NULL: for their leads the plan sees removed and renamed
steps only, as before.

Revision ID: 0014_step_texts
Revises: 0010_admin_search
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014_step_texts"
down_revision: str | Sequence[str] | None = "0010_admin_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("flow_versions") as batch:
        batch.add_column(sa.Column("texts", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flow_versions") as batch:
        batch.drop_column("texts")
