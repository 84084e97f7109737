"""Double opt-in by email: a delivery may be a `confirm` email.

The confirmation (and its one reminder) is a delivery row like any other, so
it is claimed and sent by the worker exactly once; its own kind is what lets
the claim send it to a `pending` lead and nothing else.

Revision ID: 0006_forms
Revises: 0004_report_tallies
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006_forms"
down_revision: str | Sequence[str] | None = "0004_report_tallies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint(op.f("ck_deliveries_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_deliveries_kind"), "kind IN ('email', 'notify', 'confirm')")


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE kind = 'confirm'")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint(op.f("ck_deliveries_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_deliveries_kind"), "kind IN ('email', 'notify')")
