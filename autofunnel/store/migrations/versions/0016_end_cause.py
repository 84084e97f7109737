"""Why an enrollment ended, as data: `enrollments.end_cause`.

Until now the only record of why was `end_reason`, words for people, and the sending rule
found enrollments ended by their lead's suppression by the words' first letters ("lead
unsubscribed"). The cause is now a column of known words; existing rows get theirs from
the status and the words they were written with, here in SQL of its own.

Revision ID: 0016_end_cause
Revises: 0015_refund_tallies
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_end_cause"
down_revision: str | Sequence[str] | None = "0015_refund_tallies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CAUSES = ("finished", "exit_step", "loop", "moved_on", "stopped", "suppressed", "removed")


def upgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("end_cause", sa.String(length=12), nullable=True))
        batch.create_check_constraint(op.f("ck_enrollments_end_cause"), f"end_cause IN ({', '.join(repr(c) for c in CAUSES)})")
    # The words each cause was written with until this version (domain/engine.py, services/events.py,
    # services/scheduler.py of 2026-12-03); an exited row whose words match none keeps no cause.
    op.execute(
        "UPDATE enrollments SET end_cause = CASE"
        " WHEN status = 'done' THEN 'finished'"
        " WHEN status = 'stopped' THEN 'stopped'"
        " WHEN status = 'ended' AND end_reason LIKE '% removed from the project' THEN 'removed'"
        " WHEN status = 'ended' THEN 'moved_on'"
        " WHEN status = 'exited' AND substr(end_reason, 1, 5) = 'lead ' THEN 'suppressed'"
        " WHEN status = 'exited' AND end_reason = 'exit step' THEN 'exit_step'"
        " WHEN status = 'exited' AND substr(end_reason, 1, 10) = 'more than ' THEN 'loop'"
        " END"
        " WHERE status <> 'active'"
    )


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_constraint(op.f("ck_enrollments_end_cause"), type_="check")
        batch.drop_column("end_cause")
