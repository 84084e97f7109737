"""PostgreSQL only: `leads (email, id)`, so the admin's search by a common email prefix reads the index alone.

The unique index on `email` finds every address starting with the text, but the page is
the newest of them, so each match's id has to be read: from the table, one row at a
time, when the index holds only the address. A prefix many addresses share (`lead1`,
111,111 of a million) took 232 ms that way; with the id in the index, 77 ms. SQLite
keeps every row's id in each of its indexes already, so it needs nothing new.

Revision ID: 0017_email_prefix_index
Revises: 0016_end_cause
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017_email_prefix_index"
down_revision: str | Sequence[str] | None = "0016_end_cause"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_leads_email_id", "leads", ["email", "id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_leads_email_id", table_name="leads")
