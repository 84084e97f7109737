"""Confirmation emails: a delivery of kind `confirm`, the double opt-in email a pending lead gets.

Revision ID: 0005_confirmations
Revises: 0004_report_tallies
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_confirmations"
down_revision: str | Sequence[str] | None = "0004_report_tallies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _kinds(kinds: str) -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint(op.f("ck_deliveries_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_deliveries_kind"), f"kind IN ({kinds})")


def upgrade() -> None:
    _kinds("'email', 'notify', 'confirm'")


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE kind = 'confirm'")
    _kinds("'email', 'notify'")
