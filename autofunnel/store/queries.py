"""Small dialect-aware building blocks the services share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Insert, Table, Text, any_, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignoring(session: Session, table: Table, conflict: Sequence[str]) -> Insert:
    """`INSERT … ON CONFLICT (cols) DO NOTHING` for the session's backend: idempotent writes."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    raise NotImplementedError(f"autofunnel supports SQLite and PostgreSQL, not {dialect}")


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Keep IN-lists and multi-row VALUES under SQLite's variable limit."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def among(session: Session, column: Any, values: Sequence[Any]) -> Any:
    """`column IN (values)`; on PostgreSQL `column = ANY(:array)`, one parameter,
    so the statement is the same text for every batch and the server can cache
    its plan (an expanded IN list is a new statement each time)."""
    values = list(values)
    if is_postgres(session):
        element = Text() if values and isinstance(values[0], str) else BigInteger()
        return column == any_(bindparam(None, values, type_=postgresql.ARRAY(element)))
    return column.in_(values)


def bulk_update(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Update many rows by primary key, each with its own values (`{"id": …, column: value}`),
    as one prepared statement run for every row (psycopg pipelines them on PostgreSQL;
    measured faster there than one `UPDATE … FROM (VALUES …)`). All rows name the same columns."""
    if not rows:
        return
    names = [name for name in rows[0] if name != "id"]
    session.execute(
        update(table).where(table.c.id == bindparam("b_id")).values({name: bindparam(name) for name in names}),
        [{"b_id": row["id"], **{name: row[name] for name in names}} for row in rows],
    )
