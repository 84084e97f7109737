"""Ad spend per channel and day, for the report's cost per lead, cost per customer and return on spend."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from autofunnel.errors import InvalidInputError, NotFoundError
from autofunnel.services.runtime import Runtime
from autofunnel.store.models import Spend
from autofunnel.store.queries import is_postgres

DEFAULT_CURRENCY = "EUR"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
MAX_AMOUNT = Decimal(10) ** 12
"""The column holds 14 digits, 2 after the point; a larger amount would make PostgreSQL raise."""


@dataclass(frozen=True)
class SpendInput:
    channel: str
    amount: Decimal
    day: date
    currency: str = DEFAULT_CURRENCY


def parse_spend(channel: Any, amount: Any, day: Any, currency: Any = None) -> SpendInput:
    """Check one spend entry as the CLI and the API receive it; a bad value names its field."""
    if not isinstance(channel, str) or not channel.strip() or len(channel.strip()) > 100:
        raise InvalidInputError("a channel name (1 to 100 characters) is required", field="channel", code="required")
    try:
        value = Decimal(str(amount).strip()) if isinstance(amount, (str, int, float)) and not isinstance(amount, bool) else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value < 0 or value >= MAX_AMOUNT or value != value.quantize(Decimal("0.01")):
        raise InvalidInputError(f"{amount!r} is not an amount such as 120 or 99.50", field="amount")
    if not isinstance(day, str):
        raise InvalidInputError("a date such as 2026-03-01 is required", field="date", code="required")
    try:
        parsed = date.fromisoformat(day.strip())
    except ValueError:
        raise InvalidInputError(f"{day!r} is not a date such as 2026-03-01", field="date") from None
    code = (currency or DEFAULT_CURRENCY).strip().upper() if isinstance(currency, str) or currency is None else ""
    if not _CURRENCY.match(code):
        raise InvalidInputError(f"{currency!r} is not a three-letter currency code such as EUR", field="currency")
    return SpendInput(channel.strip(), value, parsed, code)


def add_spend(rt: Runtime, entry: SpendInput) -> Decimal:
    """Add spend to a channel's day; a second entry for the same channel, day and currency adds
    to the first (invoices come in parts). Returns the day's new total."""
    now = rt.clock.now()
    with rt.db.transaction() as session:
        insert = (postgresql.insert if is_postgres(session) else sqlite.insert)(Spend)
        session.execute(
            insert.values(channel=entry.channel, day=entry.day, amount=entry.amount, currency=entry.currency, created_at=now, updated_at=now)
            .on_conflict_do_update(
                index_elements=["channel", "day", "currency"],
                set_={"amount": Spend.amount + insert.excluded.amount, "updated_at": now},
            )
        )
        total = session.scalar(
            select(Spend.amount).where(Spend.channel == entry.channel, Spend.day == entry.day, Spend.currency == entry.currency)
        )
    return Decimal(total or 0).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class SpendEntry:
    id: int
    channel: str
    day: date
    amount: Decimal
    currency: str


def list_spend(rt: Runtime, limit: int = 500) -> list[SpendEntry]:
    """The latest spend entries, newest day first, as the admin lists them."""
    with rt.db.read() as session:
        rows = session.scalars(select(Spend).order_by(Spend.day.desc(), Spend.channel, Spend.id).limit(limit))
        return [SpendEntry(r.id, r.channel, r.day, Decimal(r.amount).quantize(Decimal("0.01")), r.currency) for r in rows]


def set_spend(rt: Runtime, entry_id: int, amount: Any) -> SpendEntry:
    """Correct one entry's amount (an amount of 0 removes it), e.g. after a typo in the admin."""
    checked = parse_spend("x", amount, "2000-01-01").amount
    with rt.db.transaction() as session:
        row = session.get(Spend, entry_id)
        if row is None:
            raise NotFoundError(f"no spend entry {entry_id}", field="id", code="unknown_spend")
        entry = SpendEntry(row.id, row.channel, row.day, checked, row.currency)
        if checked == 0:
            session.delete(row)
        else:
            row.amount = checked
            row.updated_at = rt.clock.now()
        return entry
