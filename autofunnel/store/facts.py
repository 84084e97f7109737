"""How the stored facts read in SQL, the same for the running tallies and the report.

A purchase's amount, currency and order, which purchase a refund gives money
back for, the UTC day of a moment and "within this long after": each written
once per backend, so a tally and the report that adds it up cannot count
differently.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final

from sqlalchemy import JSON, ColumnElement, Float, String, and_, case, cast, func, literal, literal_column, select
from sqlalchemy.orm import Session, aliased

from autofunnel.domain.report import PRODUCT_LENGTH, PRODUCTS, TALLY_SPLITS
from autofunnel.store.models import CohortTally, Lead
from autofunnel.store.queries import Executor, is_postgres


CHANNEL_ROWS: Final = CohortTally.split == ""
"""The tally rows that count each figure once (by channel, and the writers' rows not folded yet):
every reader of the tallies but a report by lead split reads only these."""


def day_of(session: Session, moment: Any) -> Any:
    """The UTC calendar day of a stored moment."""
    if is_postgres(session):
        # A literal zone, not a bound one: PostgreSQL must see the same expression in GROUP BY.
        return cast(func.timezone(literal_column("'UTC'"), moment), CohortTally.cohort_day.type)
    # SQLite stores a moment as UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff' (`UTCDateTime`; every period
    # filter compares that text): its first ten characters are its day, a third of the cost of `date()`.
    return func.substr(moment, 1, 10, type_=String)


def lead_value(lead: Any, split: str) -> ColumnElement[Any]:
    """What a lead is grouped by for `split` (a report's `by`, or `products`): its owner, its products
    bought (as one set value), or the field of that name."""
    if split == PRODUCTS:
        return lead.products
    # Text on both backends: SQLite's json_extract would give a number field as a number.
    return lead.owner if split == "owner" else cast(lead.fields[split.removeprefix("field:")].as_string(), String)


def splits_of(pg: bool, lead: Any) -> Any:
    """A lead's (an alias of `Lead` joined) values of `TALLY_SPLITS`, as the JSON object text a raw
    tally row carries (`cohort_tallies.lead_split`) until `fold_tallies` files it under each split."""
    pairs = [part for split in TALLY_SPLITS for part in (literal_column(f"'{split}'"), lead_value(lead, split))]
    return cast(func.json_build_object(*pairs) if pg else func.json_object(*pairs), String)


def lead_splits(pg: bool, lead_id: Any) -> Any:
    """`splits_of` the lead with this id, looked up (for a statement that reads one row per fact;
    where each is tried against several figures, the lead is joined once instead)."""
    lead = aliased(Lead, name="split_lead")
    return func.coalesce(select(splits_of(pg, lead)).where(lead.id == lead_id).scalar_subquery(), "{}")


def split_value_in(pg: bool, lead_split: Any, split: str) -> Any:
    """`split_pairs` in SQL: one split's value in a `lead_split` text, empty when it has none."""
    found = func.json_extract_path_text(cast(lead_split, JSON), split) if pg else func.json_extract(lead_split, f"$.{split}")
    return func.coalesce(found, "")


@functools.lru_cache(maxsize=4096)
def split_pairs(lead_split: str) -> tuple[tuple[str, str], ...]:
    """A writer's tally row's `lead_split` as (split, value) pairs; no value is empty text, as no channel is."""
    values = json.loads(lead_split)
    return tuple((split, "" if values.get(split) is None else str(values[split])) for split in TALLY_SPLITS)


def amount_of(session: Executor, event: Any) -> ColumnElement[float]:
    """A purchase's `amount` as a number; an amount that is not a number counts as nothing."""
    if is_postgres(session):
        return case((func.jsonb_typeof(event.properties["amount"]) == "number", event.properties["amount"].as_float()), else_=0.0)
    return func.coalesce(cast(func.json_extract(event.properties, "$.amount"), Float), 0.0)


def currency_of(event: Any) -> ColumnElement[str]:
    return func.coalesce(event.properties["currency"].as_string(), "")


def product_of(event: Any) -> ColumnElement[Any]:
    """A purchase's (or refund's) `product` as a report by product groups it: its first
    `PRODUCT_LENGTH` characters, none when it has none (or empty text)."""
    return func.nullif(func.substr(cast(event.properties["product"].as_string(), String), 1, PRODUCT_LENGTH), "")


def product_key(event: Any) -> ColumnElement[str]:
    """`product_of` as a tally row keeps it (in `step`): no product is empty text."""
    return func.coalesce(product_of(event), "")


def order_of(event: Any) -> ColumnElement[Any]:
    """A purchase's or refund's `order_id`, as stored (text or number)."""
    return event.properties["order_id"].as_string()


def refund_of(refund: Any, purchase: Any, typed: Callable[[Any], Any] = lambda column: column) -> ColumnElement[bool]:
    """`refund` (an event of type refund) gives money back for `purchase`: the same lead and order.
    `typed` wraps `refund.type` (`Unindexed` when the refunds are a batch's ids)."""
    return and_(refund.lead_id == purchase.lead_id, typed(refund.type) == "refund", order_of(refund) == order_of(purchase))


def order_key(refund: Any) -> ColumnElement[str]:
    """Which order a refund is about, to count refunded orders: its lead and `order_id`; a refund
    without one is an order of its own."""
    order = func.coalesce(cast(order_of(refund), String), literal("#") + cast(refund.id, String))
    return cast(refund.lead_id, String) + literal(":") + order


def seconds_between(session: Executor, later: Any, earlier: Any) -> Any:
    """`later - earlier` in seconds, as a number."""
    if is_postgres(session):
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _interval(span: timedelta) -> Any:
    return literal_column(f"interval '{int(span.total_seconds())} seconds'")


def before(session: Executor, later: Any, earlier: Any, span: timedelta) -> ColumnElement[bool]:
    """`later < earlier + span`, written so each backend compares it directly."""
    if is_postgres(session):
        return later < earlier + _interval(span)
    return func.julianday(later) < func.julianday(earlier) + int(span.total_seconds()) / 86400.0


def within_before(session: Executor, earlier: Any, later: Any, span: timedelta) -> ColumnElement[bool]:
    """`earlier` after `later - span`, as a range an index of `earlier` serves; `before` holds the
    exact bound (SQLite's `datetime()` drops the fraction of a second, so its range is a little wider)."""
    if is_postgres(session):
        return earlier > later - _interval(span)
    return earlier >= func.datetime(later, f"-{int(span.total_seconds())} seconds")
