"""Report tallies: the cohort report's counts kept as they happen, and stage times stored on each stage entry.

- `cohort_tallies`: per funnel, cohort day and channel, every count and sum the
  cohort report adds up (see `services/tallies.py`), filled here from what is stored.
- `deliveries (lead_id, flow, sent_at)` instead of `(lead_id)`: a lead's emails of a
  funnel around a purchase, for `purchases_7d`.
- `stage_entries.channel`, `since_previous_s`, `since_first_s`: the lead's channel
  and the stage's times, filled here from the leads and the stage entries; with
  partial indexes the time percentiles read in order.

Revision ID: 0004_report_tallies
Revises: 0003_reports
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004_report_tallies"
down_revision: str | Sequence[str] | None = "0003_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME_INDEXES = (
    ("ix_stage_entries_since_previous", ["funnel", "stage", "since_previous_s", "cohort_at"], "since_previous_s IS NOT NULL"),
    ("ix_stage_entries_channel_since_previous", ["funnel", "channel", "stage", "since_previous_s", "cohort_at"], "since_previous_s IS NOT NULL"),
    ("ix_stage_entries_since_first", ["funnel", "stage", "since_first_s", "cohort_at"], "since_first_s IS NOT NULL"),
    ("ix_stage_entries_channel_since_first", ["funnel", "channel", "stage", "since_first_s", "cohort_at"], "since_first_s IS NOT NULL"),
)


def upgrade() -> None:
    op.add_column("stage_entries", sa.Column("channel", sa.String(length=100), nullable=True))
    op.add_column("stage_entries", sa.Column("since_previous_s", sa.Float(), nullable=True))
    op.add_column("stage_entries", sa.Column("since_first_s", sa.Float(), nullable=True))
    op.create_table(
        "cohort_tallies",
        sa.Column("id", ID, nullable=False),
        sa.Column("funnel", sa.String(length=100), nullable=False),
        sa.Column("cohort_day", sa.Date(), nullable=False),
        sa.Column("channel", sa.String(length=100), server_default=sa.text("''"), nullable=False),
        sa.Column("figure", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.String(length=100), server_default=sa.text("''"), nullable=False),
        sa.Column("step", sa.String(length=200), server_default=sa.text("''"), nullable=False),
        sa.Column("detail", sa.String(length=100), server_default=sa.text("''"), nullable=False),
        sa.Column("n", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("amount", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("folded", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cohort_tallies")),
    )
    op.create_index(op.f("ix_cohort_tallies_funnel_cohort_day"), "cohort_tallies", ["funnel", "cohort_day"])
    op.create_index(op.f("ix_cohort_tallies_folded_id"), "cohort_tallies", ["folded", "id"])
    # A lead's emails of one funnel in send order: what a purchase's "within 7 days of which email" looks up.
    op.drop_index(op.f("ix_deliveries_lead_id"), table_name="deliveries")
    op.create_index(op.f("ix_deliveries_lead_id_flow_sent_at"), "deliveries", ["lead_id", "flow", "sent_at"])
    _fill_stage_entries()
    for name, columns, where in TIME_INDEXES:
        op.create_index(name, "stage_entries", columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where))
    from autofunnel.services import tallies

    # The counting statements the engine runs on each write, run once over everything;
    # through `op.execute`, so `alembic upgrade --sql` prints them too.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ANALYZE stage_entries, events, deliveries, assignments")  # fresh statistics for the recount's joins
    writer = _Statements()
    tallies.count_stage_entries(writer, tallies.everything)  # type: ignore[arg-type]
    tallies.count_emails(writer, tallies.everything)  # type: ignore[arg-type]
    tallies.count_events(writer, tallies.everything)  # type: ignore[arg-type]


class _Statements:
    """Just enough of a Session for the tally statements: their dialect, and `op.execute`."""

    def get_bind(self) -> Any:
        return op.get_bind()

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> None:
        op.execute(statement)


def _fill_stage_entries() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        channel = "coalesce(nullif(l.source ->> 'channel', ''), nullif(l.source ->> 'utm_source', ''))"
        seconds = "round(extract(epoch from ({later} - {earlier}))::numeric, 3)"
    else:
        channel = "coalesce(nullif(json_extract(l.source, '$.channel'), ''), nullif(json_extract(l.source, '$.utm_source'), ''))"
        seconds = "round((julianday({later}) - julianday({earlier})) * 86400.0, 3)"
    op.execute(f"UPDATE stage_entries SET channel = (SELECT substr(CAST({channel} AS TEXT), 1, 100) FROM leads l WHERE l.id = stage_entries.lead_id)")
    since_previous = seconds.format(later="stage_entries.entered_at", earlier="p.entered_at")
    op.execute(
        f"UPDATE stage_entries SET since_previous_s = (SELECT {since_previous} FROM stage_entries p "
        "WHERE p.lead_id = stage_entries.lead_id AND p.funnel = stage_entries.funnel "
        "AND p.position = stage_entries.position - 1 AND NOT p.skipped) WHERE NOT stage_entries.skipped"
    )
    since_first = seconds.format(later="entered_at", earlier="cohort_at")
    op.execute(f"UPDATE stage_entries SET since_first_s = {since_first} WHERE NOT skipped AND position > 0")


def downgrade() -> None:
    for name, _, _ in TIME_INDEXES:
        op.drop_index(name, table_name="stage_entries")
    op.drop_index(op.f("ix_cohort_tallies_folded_id"), table_name="cohort_tallies")
    op.drop_index(op.f("ix_cohort_tallies_funnel_cohort_day"), table_name="cohort_tallies")
    op.drop_table("cohort_tallies")
    op.drop_index(op.f("ix_deliveries_lead_id_flow_sent_at"), table_name="deliveries")
    op.create_index(op.f("ix_deliveries_lead_id"), "deliveries", ["lead_id"])
    with op.batch_alter_table("stage_entries") as batch:
        batch.drop_column("since_first_s")
        batch.drop_column("since_previous_s")
        batch.drop_column("channel")
