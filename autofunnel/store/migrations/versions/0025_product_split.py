"""Reports by product from the running tallies: each lead's products bought, and its timed stage entries per product.

A report `by=product` groups leads by every product they ever bought (a lead who
bought two is in both groups, one who bought nothing in the `null` group) and
revenue by each purchase's own product. It counted the stored facts: 92 s for 30
days at 1M leads on SQLite. Now:

- `leads.products` is the set of products a lead bought, as one value (a JSON array,
  sorted, `null` for a purchase without a product), filled here from its purchases;
  the tallies are kept by it as by owner (`split` = `products`), and a report counts
  each set's rows for every product in it.
- `stage_entry_products` holds each stage entry with a time once per product of its
  lead (`''` for none), so one product's percentiles are read at their ranks off an
  index, as one owner's are off the stage entries.
- The revenue per purchase product is kept by new tally figures (`product_revenue`, …).

The tallies written before this version have neither: `tally_state.products_needed`
records that they are still to be counted (`autofunnel report recount`); until then a
report by product counts the facts, and every other report reads the tallies as before.
A database with no stage entry yet needs no recount.

Revision ID: 0025_product_split
Revises: 0024_stage_entry_splits
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025_product_split"
down_revision: str | Sequence[str] | None = "0024_stage_entry_splits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MOMENT = sa.DateTime(timezone=True)
SINCE = ("since_previous", "since_first")


def _products_bought(pg: bool) -> str:
    """Each buyer's set of products as `domain.report.with_products` writes it: a JSON array with no
    spaces, a purchase without a product (or with empty text) first as `null`, then each product cut to
    200 characters, in code point order, once."""
    if pg:
        product = "NULLIF(substr(events.properties ->> 'product', 1, 200), '')"
        listed = """'[' || string_agg(COALESCE(CAST(to_json(product) AS VARCHAR), 'null'), ',' ORDER BY product COLLATE "C" NULLS FIRST) || ']'"""
        return f"(SELECT {listed} FROM (SELECT DISTINCT {product} AS product FROM events WHERE events.lead_id = leads.id AND events.type = 'purchase') AS bought)"
    product = "NULLIF(substr(json_extract(events.properties, '$.product'), 1, 200), '')"
    return (
        f"(SELECT json_group_array(product) FROM (SELECT DISTINCT {product} AS product FROM events"
        " WHERE events.lead_id = leads.id AND events.type = 'purchase' ORDER BY product IS NOT NULL, product))"
    )


def _each_product(pg: bool) -> tuple[str, str]:
    """The set's members as rows, and the member (`''` for none)."""
    if pg:
        return "jsonb_array_elements_text(CAST(COALESCE(leads.products, '[null]') AS JSONB)) AS bought(value)", "COALESCE(bought.value, '')"
    return "json_each(COALESCE(leads.products, '[null]')) AS bought", "COALESCE(CAST(bought.value AS VARCHAR), '')"


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    op.add_column("leads", sa.Column("products", sa.String(), nullable=True))
    op.execute(f"UPDATE leads SET products = {_products_bought(pg)} WHERE id IN (SELECT lead_id FROM events WHERE type = 'purchase')")
    op.create_table(
        "stage_entry_products",
        sa.Column("stage_entry_id", ID, nullable=False),
        sa.Column("product", sa.String(), nullable=False),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("funnel", sa.String(length=100), nullable=False),
        sa.Column("stage", sa.String(length=100), nullable=False),
        sa.Column("cohort_at", MOMENT, nullable=False),
        sa.Column("entered_at", MOMENT, nullable=False),
        sa.Column("since_previous_s", sa.Float(), nullable=True),
        sa.Column("since_first_s", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["lead_id"], ["leads.id"], name=op.f("fk_stage_entry_products_lead_id_leads")),
        sa.ForeignKeyConstraint(["stage_entry_id"], ["stage_entries.id"], name=op.f("fk_stage_entry_products_stage_entry_id_stage_entries")),
        sa.PrimaryKeyConstraint("stage_entry_id", "product", name=op.f("pk_stage_entry_products")),
    )
    rows, product = _each_product(pg)
    op.execute(
        "INSERT INTO stage_entry_products (stage_entry_id, product, lead_id, funnel, stage, cohort_at, entered_at, since_previous_s, since_first_s)"
        f" SELECT stage_entries.id, {product}, stage_entries.lead_id, stage_entries.funnel, stage_entries.stage, stage_entries.cohort_at,"
        " stage_entries.entered_at, stage_entries.since_previous_s, stage_entries.since_first_s"
        f" FROM stage_entries JOIN leads ON leads.id = stage_entries.lead_id CROSS JOIN {rows}"
        " WHERE stage_entries.since_previous_s IS NOT NULL OR stage_entries.since_first_s IS NOT NULL"
    )
    op.create_index("ix_stage_entry_products_lead_id", "stage_entry_products", ["lead_id"])
    for since in SINCE:
        op.create_index(
            f"ix_stage_entry_products_{since}", "stage_entry_products", ["funnel", "product", "stage", f"{since}_s", "cohort_at", "entered_at"],
            sqlite_where=sa.text(f"{since}_s IS NOT NULL"), postgresql_where=sa.text(f"{since}_s IS NOT NULL"),
        )
    op.add_column("tally_state", sa.Column("products_needed", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute("UPDATE tally_state SET products_needed = EXISTS (SELECT 1 FROM stage_entries)")


def downgrade() -> None:
    op.drop_column("tally_state", "products_needed")
    op.drop_table("stage_entry_products")
    op.drop_column("leads", "products")
