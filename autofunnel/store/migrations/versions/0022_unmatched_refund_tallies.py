"""Refunds of orders never recorded kept in the report's tallies.

The report lists the period's refunds of orders it never saw; finding them took a
lookup per refund of the period (0.5 s of a 90-day report at a million leads on
PostgreSQL, nearly always to find none). The tallies now count them per funnel
and day (`unmatched_refunds`), and a report whose tallies hold none skips the
search; no column changes. This upgrade counts the refunds already stored (one
statement over the refunds, each looking up its lead's purchases), so no recount
is needed.

Revision ID: 0022_unmatched_refund_tallies
Revises: 0021_attribution_tallies
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0022_unmatched_refund_tallies"
down_revision: str | Sequence[str] | None = "0021_attribution_tallies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Compiled from store/tally_statements.py (`unmatched_refund_parts` over everything: the parts
# that take refunds back find nothing then) for each backend; literal SQL, no bound parameters.
_COUNT = """INSERT INTO cohort_tallies (funnel, cohort_day, channel, figure, stage, step, detail, basis, n, amount)
SELECT s0.funnel, {day}, coalesce(s0.channel, ''), 'unmatched_refunds', '', '', {currency}, '{basis}', count(*), sum({amount})
FROM events AS r JOIN stage_entries AS s0 ON s0.lead_id = r.lead_id AND s0.position = 0
WHERE r.type = 'refund' AND r.at >= s0.entered_at AND NOT EXISTS (
    SELECT 1 FROM events AS ordered WHERE {ordered_type} = 'purchase' AND ordered.lead_id = r.lead_id AND {order_of_ordered} = {order_of_r}
)
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"""
_SQL = {
    "sqlite": {
        "currency": "coalesce(CAST(json_extract(r.properties, '$.\"currency\"') AS VARCHAR), '')",
        "amount": "coalesce(CAST(json_extract(r.properties, '$.amount') AS FLOAT), 0.0)",
        "ordered_type": "+ordered.type",
        "order_of_ordered": "CAST(json_extract(ordered.properties, '$.\"order_id\"') AS VARCHAR)",
        "order_of_r": "CAST(json_extract(r.properties, '$.\"order_id\"') AS VARCHAR)",
        "cohort": "date(s0.cohort_at)",
        "calendar": "date(r.at)",
    },
    "postgresql": {
        "currency": "coalesce(r.properties ->> 'currency', '')",
        "amount": "CASE WHEN jsonb_typeof(r.properties -> 'amount') = 'number' THEN CAST(r.properties ->> 'amount' AS FLOAT) ELSE 0.0 END",
        "ordered_type": "ordered.type",
        "order_of_ordered": "(ordered.properties ->> 'order_id')",
        "order_of_r": "(r.properties ->> 'order_id')",
        "cohort": "CAST(timezone('UTC', s0.cohort_at) AS DATE)",
        "calendar": "CAST(timezone('UTC', r.at) AS DATE)",
    },
}


def upgrade() -> None:
    words = _SQL[op.get_bind().dialect.name]
    for basis in ("cohort", "calendar"):
        op.execute(_COUNT.format(day=words[basis], basis=basis, **{k: v for k, v in words.items() if k not in ("cohort", "calendar")}))


def downgrade() -> None:
    op.execute("DELETE FROM cohort_tallies WHERE figure = 'unmatched_refunds'")
