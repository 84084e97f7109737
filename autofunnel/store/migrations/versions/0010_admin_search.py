"""Indexes for the admin's leads list and flow map, so each answers from an index at a million leads.

- `enrollments (flow, stage, step_id, lead_id)` over active rows: how many leads wait on
  each step (the flow map), and the leads waiting on one step, newest first.
- `stage_entries (funnel, stage, lead_id)`: the leads that reached a stage (or entered a
  funnel: its first stage), newest first.
- `leads (status, id)`: the leads of one status, newest first.
- `leads (first_name, id)`: a first name, looked up in the few ways people write it
  (`ann`, `Ann`, `ANN`); an expression index on `lower(first_name)` would catch every
  spelling, but SQLAlchemy cannot reflect one on SQLite, so the schema check could not
  hold the model to the migration.
- PostgreSQL only, `leads.tags` GIN (`jsonb_path_ops`): a lead by one exact tag. SQLite
  cannot index the members of a JSON array; there the tag search reads the table.

Revision ID: 0010_admin_search
Revises: 0005_confirmations
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_admin_search"
down_revision: str | Sequence[str] | None = "0005_confirmations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_enrollments_waiting", "enrollments", ["flow", "stage", "step_id", "lead_id"],
        postgresql_where=sa.text("status = 'active'"), sqlite_where=sa.text("status = 'active'"),
    )
    op.create_index("ix_stage_entries_reached", "stage_entries", ["funnel", "stage", "lead_id"])
    op.create_index("ix_leads_status_id", "leads", ["status", "id"])
    op.create_index("ix_leads_first_name", "leads", ["first_name", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_leads_tags", "leads", ["tags"], postgresql_using="gin", postgresql_ops={"tags": "jsonb_path_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_leads_tags", table_name="leads")
    op.drop_index("ix_leads_first_name", table_name="leads")
    op.drop_index("ix_leads_status_id", table_name="leads")
    op.drop_index("ix_stage_entries_reached", table_name="stage_entries")
    op.drop_index("ix_enrollments_waiting", table_name="enrollments")
