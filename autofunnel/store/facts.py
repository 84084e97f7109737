"""How the stored facts read in SQL, the same for the running tallies and the report.

A purchase's amount, currency and order, which purchase a refund gives money
back for, the UTC day of a moment and "within this long after": each written
once per backend, so a tally and the report that adds it up cannot count
differently.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Float, String, and_, case, cast, func, literal, literal_column
from sqlalchemy.orm import Session

from autofunnel.store.models import CohortTally
from autofunnel.store.queries import Executor, is_postgres


def day_of(session: Session, moment: Any) -> Any:
    """The UTC calendar day of a stored moment."""
    if is_postgres(session):
        # A literal zone, not a bound one: PostgreSQL must see the same expression in GROUP BY.
        return cast(func.timezone(literal_column("'UTC'"), moment), CohortTally.cohort_day.type)
    return func.date(moment, type_=String)


def amount_of(session: Executor, event: Any) -> ColumnElement[float]:
    """A purchase's `amount` as a number; an amount that is not a number counts as nothing."""
    if is_postgres(session):
        return case((func.jsonb_typeof(event.properties["amount"]) == "number", event.properties["amount"].as_float()), else_=0.0)
    return func.coalesce(cast(func.json_extract(event.properties, "$.amount"), Float), 0.0)


def currency_of(event: Any) -> ColumnElement[str]:
    return func.coalesce(event.properties["currency"].as_string(), "")


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
