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
    # The counting statements the engine runs on each write, run once over everything, as they
    # were compiled when this migration was last changed: a copy, so that editing today's tally
    # code never changes what this upgrade does. Through `op.execute`, so `alembic upgrade --sql`
    # prints them too.
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("ANALYZE stage_entries, events, deliveries, assignments")  # fresh statistics for the recount's joins
    for statement in _RECOUNT[dialect]:
        op.execute(sa.text(statement))


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


# Compiled from services/tallies.py (count_stage_entries, count_emails, count_events over
# everything) for each backend; literal SQL, no bound parameters.
_RECOUNT: dict[str, tuple[str, ...]] = {
    "sqlite": (
        """INSERT INTO cohort_tallies (funnel, cohort_day, channel, figure, stage, step, detail, n, amount) SELECT stage_entries.funnel AS funnel, date(stage_entries.cohort_at) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'reached' AS figure, stage_entries.stage AS stage, '' AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries 
WHERE 1 = 1 GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT stage_entries.funnel AS funnel, date(stage_entries.cohort_at) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'skipped' AS figure, stage_entries.stage AS stage, '' AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries 
WHERE stage_entries.skipped IS 1 GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT stage_entries.funnel AS funnel, date(stage_entries.cohort_at) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'timed' AS figure, stage_entries.stage AS stage, '' AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries 
WHERE stage_entries.since_previous_s IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT stage_entries.funnel AS funnel, date(stage_entries.cohort_at) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'lasted' AS figure, stage_entries.stage AS stage, '' AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries 
WHERE stage_entries.since_first_s IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT stage_entries.funnel AS funnel, date(stage_entries.cohort_at) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'holdout' AS figure, stage_entries.stage AS stage, '' AS step, assignments.value AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries JOIN assignments ON assignments.lead_id = stage_entries.lead_id AND assignments.flow = stage_entries.funnel AND assignments.name = 'holdout' 
WHERE 1 = 1 GROUP BY 1, 2, 3, 4, 5, 6, 7""",
        """INSERT INTO cohort_tallies (funnel, cohort_day, channel, figure, stage, step, detail, n, amount) SELECT deliveries.flow AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'sent' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM deliveries JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'opened' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(deliveries.opened_at) AS n, 0.0 AS amount 
FROM deliveries JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 
HAVING count(deliveries.opened_at) > 0 UNION ALL SELECT deliveries.flow AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'clicked' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(deliveries.clicked_at) AS n, 0.0 AS amount 
FROM deliveries JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 
HAVING count(deliveries.clicked_at) > 0""",
        """INSERT INTO cohort_tallies (funnel, cohort_day, channel, figure, stage, step, detail, n, amount) SELECT s0.funnel AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'revenue' AS figure, '' AS stage, '' AS step, coalesce(CAST(JSON_EXTRACT(p.properties, '$."currency"') AS VARCHAR), '') AS detail, count(*) AS n, sum(coalesce(CAST(json_extract(p.properties, '$.amount') AS FLOAT), 0.0)) AS amount 
FROM events AS p JOIN stage_entries AS s0 ON s0.lead_id = p.lead_id AND s0.position = 0 
WHERE p.type = 'purchase' AND p.at >= s0.entered_at GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT s0.funnel AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'customers' AS figure, '' AS stage, '' AS step, coalesce(CAST(JSON_EXTRACT(p.properties, '$."currency"') AS VARCHAR), '') AS detail, count(DISTINCT p.lead_id) AS n, 0.0 AS amount 
FROM events AS p JOIN stage_entries AS s0 ON s0.lead_id = p.lead_id AND s0.position = 0 
WHERE p.type = 'purchase' AND p.at >= s0.entered_at AND NOT (EXISTS (SELECT * 
FROM events AS earlier 
WHERE 0 = 1)) GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT s0.funnel AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'refunded' AS figure, '' AS stage, '' AS step, coalesce(CAST(JSON_EXTRACT(r.properties, '$."currency"') AS VARCHAR), '') AS detail, count(*) AS n, sum(coalesce(CAST(json_extract(r.properties, '$.amount') AS FLOAT), 0.0)) AS amount 
FROM events AS r JOIN stage_entries AS s0 ON s0.lead_id = r.lead_id AND s0.position = 0 
WHERE r.type = 'refund' AND r.at >= s0.entered_at GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT s0.funnel AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'refunded_orders' AS figure, '' AS stage, '' AS step, coalesce(CAST(JSON_EXTRACT(r.properties, '$."currency"') AS VARCHAR), '') AS detail, count(DISTINCT (CAST(r.lead_id AS VARCHAR) || ':' || coalesce(CAST(CAST(JSON_EXTRACT(r.properties, '$."order_id"') AS VARCHAR) AS VARCHAR), '#' || CAST(r.id AS VARCHAR)))) AS n, 0.0 AS amount 
FROM events AS r JOIN stage_entries AS s0 ON s0.lead_id = r.lead_id AND s0.position = 0 
WHERE r.type = 'refund' AND r.at >= s0.entered_at AND NOT (EXISTS (SELECT * 
FROM events AS earlier_refund 
WHERE 0 = 1)) GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'unsubscribed' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM events AS u JOIN deliveries ON u.lead_id = deliveries.lead_id AND u.type = 'unsubscribed' AND CAST(JSON_EXTRACT(u.properties, '$."delivery"') AS INTEGER) = deliveries.id JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'purchases_7d' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, sum(coalesce(CAST(json_extract(p.properties, '$.amount') AS FLOAT), 0.0)) AS amount 
FROM events AS p JOIN deliveries ON p.lead_id = deliveries.lead_id AND p.type = 'purchase' AND p.at >= deliveries.sent_at AND julianday(p.at) < julianday(deliveries.sent_at) + 7.0 JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'refunds_7d' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, sum(coalesce(CAST(json_extract(r.properties, '$.amount') AS FLOAT), 0.0)) AS amount 
FROM events AS r JOIN events AS p ON r.lead_id = p.lead_id AND r.type = 'refund' AND CAST(JSON_EXTRACT(r.properties, '$."order_id"') AS VARCHAR) = CAST(JSON_EXTRACT(p.properties, '$."order_id"') AS VARCHAR) JOIN deliveries ON p.lead_id = deliveries.lead_id AND p.type = 'purchase' AND p.at >= deliveries.sent_at AND julianday(p.at) < julianday(deliveries.sent_at) + 7.0 JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, date(s0.cohort_at) AS cohort_day, coalesce(s0.channel, '') AS channel, 'refunds_7d' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, sum(coalesce(CAST(json_extract(r.properties, '$.amount') AS FLOAT), 0.0)) AS amount 
FROM events AS r JOIN events AS p ON r.lead_id = p.lead_id AND r.type = 'refund' AND CAST(JSON_EXTRACT(r.properties, '$."order_id"') AS VARCHAR) = CAST(JSON_EXTRACT(p.properties, '$."order_id"') AS VARCHAR) JOIN deliveries ON p.lead_id = deliveries.lead_id AND p.type = 'purchase' AND p.at >= deliveries.sent_at AND julianday(p.at) < julianday(deliveries.sent_at) + 7.0 JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE 0 = 1 GROUP BY 1, 2, 3, 4, 5, 6, 7""",
    ),
    "postgresql": (
        """INSERT INTO cohort_tallies (funnel, cohort_day, channel, figure, stage, step, detail, n, amount) SELECT stage_entries.funnel AS funnel, CAST(timezone('UTC', stage_entries.cohort_at) AS DATE) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'reached' AS figure, stage_entries.stage AS stage, '' AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries 
WHERE true GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT stage_entries.funnel AS funnel, CAST(timezone('UTC', stage_entries.cohort_at) AS DATE) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'skipped' AS figure, stage_entries.stage AS stage, '' AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries 
WHERE stage_entries.skipped IS true GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT stage_entries.funnel AS funnel, CAST(timezone('UTC', stage_entries.cohort_at) AS DATE) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'timed' AS figure, stage_entries.stage AS stage, '' AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries 
WHERE stage_entries.since_previous_s IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT stage_entries.funnel AS funnel, CAST(timezone('UTC', stage_entries.cohort_at) AS DATE) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'lasted' AS figure, stage_entries.stage AS stage, '' AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries 
WHERE stage_entries.since_first_s IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT stage_entries.funnel AS funnel, CAST(timezone('UTC', stage_entries.cohort_at) AS DATE) AS cohort_day, coalesce(stage_entries.channel, '') AS channel, 'holdout' AS figure, stage_entries.stage AS stage, '' AS step, assignments.value AS detail, count(*) AS n, 0.0 AS amount 
FROM stage_entries JOIN assignments ON assignments.lead_id = stage_entries.lead_id AND assignments.flow = stage_entries.funnel AND assignments.name = 'holdout' 
WHERE true GROUP BY 1, 2, 3, 4, 5, 6, 7""",
        """INSERT INTO cohort_tallies (funnel, cohort_day, channel, figure, stage, step, detail, n, amount) SELECT deliveries.flow AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'sent' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM deliveries JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'opened' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(deliveries.opened_at) AS n, 0.0 AS amount 
FROM deliveries JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 
HAVING count(deliveries.opened_at) > 0 UNION ALL SELECT deliveries.flow AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'clicked' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(deliveries.clicked_at) AS n, 0.0 AS amount 
FROM deliveries JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 
HAVING count(deliveries.clicked_at) > 0""",
        """INSERT INTO cohort_tallies (funnel, cohort_day, channel, figure, stage, step, detail, n, amount) SELECT s0.funnel AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'revenue' AS figure, '' AS stage, '' AS step, coalesce(CAST(p.properties ->> 'currency' AS VARCHAR), '') AS detail, count(*) AS n, sum(CASE WHEN (jsonb_typeof((p.properties -> 'amount')) = 'number') THEN CAST(p.properties ->> 'amount' AS FLOAT) ELSE 0.0 END) AS amount 
FROM events AS p JOIN stage_entries AS s0 ON s0.lead_id = p.lead_id AND s0.position = 0 
WHERE p.type = 'purchase' AND p.at >= s0.entered_at GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT s0.funnel AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'customers' AS figure, '' AS stage, '' AS step, coalesce(CAST(p.properties ->> 'currency' AS VARCHAR), '') AS detail, count(DISTINCT p.lead_id) AS n, 0.0 AS amount 
FROM events AS p JOIN stage_entries AS s0 ON s0.lead_id = p.lead_id AND s0.position = 0 
WHERE p.type = 'purchase' AND p.at >= s0.entered_at AND NOT (EXISTS (SELECT * 
FROM events AS earlier 
WHERE false)) GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT s0.funnel AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'refunded' AS figure, '' AS stage, '' AS step, coalesce(CAST(r.properties ->> 'currency' AS VARCHAR), '') AS detail, count(*) AS n, sum(CASE WHEN (jsonb_typeof((r.properties -> 'amount')) = 'number') THEN CAST(r.properties ->> 'amount' AS FLOAT) ELSE 0.0 END) AS amount 
FROM events AS r JOIN stage_entries AS s0 ON s0.lead_id = r.lead_id AND s0.position = 0 
WHERE r.type = 'refund' AND r.at >= s0.entered_at GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT s0.funnel AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'refunded_orders' AS figure, '' AS stage, '' AS step, coalesce(CAST(r.properties ->> 'currency' AS VARCHAR), '') AS detail, count(DISTINCT (CAST(r.lead_id AS VARCHAR) || ':' || coalesce(CAST(CAST((r.properties ->> 'order_id') AS VARCHAR) AS VARCHAR), '#' || CAST(r.id AS VARCHAR)))) AS n, 0.0 AS amount 
FROM events AS r JOIN stage_entries AS s0 ON s0.lead_id = r.lead_id AND s0.position = 0 
WHERE r.type = 'refund' AND r.at >= s0.entered_at AND NOT (EXISTS (SELECT * 
FROM events AS earlier_refund 
WHERE false)) GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'unsubscribed' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, 0.0 AS amount 
FROM events AS u JOIN deliveries ON u.lead_id = deliveries.lead_id AND u.type = 'unsubscribed' AND CAST((u.properties ->> 'delivery') AS INTEGER) = deliveries.id JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'purchases_7d' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, sum(CASE WHEN (jsonb_typeof((p.properties -> 'amount')) = 'number') THEN CAST(p.properties ->> 'amount' AS FLOAT) ELSE 0.0 END) AS amount 
FROM events AS p JOIN deliveries ON p.lead_id = deliveries.lead_id AND p.type = 'purchase' AND p.at >= deliveries.sent_at AND p.at < deliveries.sent_at + interval '604800 seconds' JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'refunds_7d' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, sum(CASE WHEN (jsonb_typeof((r.properties -> 'amount')) = 'number') THEN CAST(r.properties ->> 'amount' AS FLOAT) ELSE 0.0 END) AS amount 
FROM events AS r JOIN events AS p ON r.lead_id = p.lead_id AND r.type = 'refund' AND CAST((r.properties ->> 'order_id') AS VARCHAR) = CAST((p.properties ->> 'order_id') AS VARCHAR) JOIN deliveries ON p.lead_id = deliveries.lead_id AND p.type = 'purchase' AND p.at >= deliveries.sent_at AND p.at < deliveries.sent_at + interval '604800 seconds' JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE deliveries.kind = 'email' AND deliveries.status = 'sent' GROUP BY 1, 2, 3, 4, 5, 6, 7 UNION ALL SELECT deliveries.flow AS funnel, CAST(timezone('UTC', s0.cohort_at) AS DATE) AS cohort_day, coalesce(s0.channel, '') AS channel, 'refunds_7d' AS figure, deliveries.stage AS stage, deliveries.step_id AS step, '' AS detail, count(*) AS n, sum(CASE WHEN (jsonb_typeof((r.properties -> 'amount')) = 'number') THEN CAST(r.properties ->> 'amount' AS FLOAT) ELSE 0.0 END) AS amount 
FROM events AS r JOIN events AS p ON r.lead_id = p.lead_id AND r.type = 'refund' AND CAST((r.properties ->> 'order_id') AS VARCHAR) = CAST((p.properties ->> 'order_id') AS VARCHAR) JOIN deliveries ON p.lead_id = deliveries.lead_id AND p.type = 'purchase' AND p.at >= deliveries.sent_at AND p.at < deliveries.sent_at + interval '604800 seconds' JOIN stage_entries AS s0 ON s0.lead_id = deliveries.lead_id AND s0.funnel = deliveries.flow AND s0.position = 0 AND deliveries.sent_at >= s0.entered_at 
WHERE false GROUP BY 1, 2, 3, 4, 5, 6, 7""",
    ),
}
