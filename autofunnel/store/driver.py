"""A one-row statement run straight on psycopg, as a transaction of its own.

A worker runs the same statement for every email it sends (the record of the
last one and the claim of the next). Through SQLAlchemy's execution path a run
costs ~60 µs of Python, and inside BEGIN … COMMIT two more round trips: ~70 µs
more in the worker and ~45 µs in the server, measured on the 2-core machine.
A single statement is atomic by itself, so it needs neither: it is compiled
once by SQLAlchemy (its SQL, casts and parameter processing stay SQLAlchemy's)
and sent by psycopg in autocommit.

Only psycopg 3 is driven this way; `supports` says when a connection can be.
SQLAlchemy's execution events (`before_cursor_execute`, `handle_error`) do not
see these statements; autofunnel listens to none on PostgreSQL.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import UpdateBase


@dataclass(frozen=True)
class _Prepared:
    sql: str
    defaults: dict[str, Any]
    """The values bound when the statement was built, by the names the SQL uses."""
    required: frozenset[str]
    """The parameters a caller must give."""
    names: dict[str, str]
    """The caller's parameter name → the name the SQL uses (SQLAlchemy escapes some)."""
    processors: dict[str, Callable[[Any], Any]]
    row: type
    results: tuple[Callable[[Any], Any] | None, ...]


def supports(connection: Connection) -> bool:
    """Can `run_alone` drive this connection's driver?"""
    return connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg"


@lru_cache(maxsize=32)
def _prepare(statement: UpdateBase, dialect: Dialect) -> _Prepared:
    compiled = statement.compile(dialect=dialect)
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise ValueError("a statement run alone cannot expand its parameters at run time")
    names: dict[str, str] = {}
    defaults: dict[str, Any] = {}
    required: set[str] = set()
    processors: dict[str, Callable[[Any], Any]] = {}
    for bind, name in compiled.bind_names.items():
        key = compiled.escaped_bind_names.get(name, name)
        names[name] = key
        if bind.callable is not None:
            raise ValueError("a statement run alone takes no parameter whose value is computed at run time")
        if bind.required:
            required.add(name)
        else:
            defaults[key] = bind.value
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[key] = processor
    for column in (*compiled.insert_prefetch, *compiled.update_prefetch):  # Python-side column defaults
        default = column.default
        if default is None or not default.is_scalar or column.key not in names:
            raise ValueError(f"{column} takes a default computed at run time, which a statement run alone cannot give")
        defaults[names[column.key]] = default.arg  # type: ignore[attr-defined]
    columns = statement.exported_columns
    if not columns:
        raise ValueError("a statement run alone returns its rows: give it RETURNING")
    return _Prepared(
        sql=str(compiled),
        defaults=defaults,
        required=frozenset(required),
        names=names,
        processors=processors,
        row=namedtuple("Row", list(columns.keys()), rename=True),  # type: ignore[misc]
        results=tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns),
    )


def run_alone(connection: Connection, statement: UpdateBase, params: dict[str, Any]) -> Any | None:
    """Run `statement` (one with RETURNING) as its own transaction; its first row, or None.

    The connection must be between transactions. A driver error comes back as
    SQLAlchemy's (an `OperationalError` for a lost server), with the connection
    invalidated when psycopg says it is broken, as SQLAlchemy's own path would.
    """
    prepared = _prepare(statement, connection.dialect)
    missing = prepared.required - params.keys()
    if missing:
        raise ValueError(f"parameters not given: {', '.join(sorted(missing))}")
    values = dict(prepared.defaults)
    for name, value in params.items():
        if name not in prepared.names:
            raise ValueError(f"the statement takes no parameter {name!r}")
        values[prepared.names[name]] = value
    for key, processor in prepared.processors.items():
        values[key] = processor(values[key])
    if connection.in_transaction():
        raise RuntimeError("a statement run alone needs a connection between transactions")
    dbapi_connection = connection.connection.driver_connection
    assert dbapi_connection is not None
    was_autocommit = dbapi_connection.autocommit
    try:
        dbapi_connection.autocommit = True
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(prepared.sql, values)
                found = cursor.fetchone()  # not `description`: it builds a column object per column, every run
        finally:
            _settle(connection, dbapi_connection, was_autocommit)
    except connection.dialect.loaded_dbapi.Error as exc:
        lost = bool(dbapi_connection.broken or dbapi_connection.closed)
        wrapped = DBAPIError.instance(
            prepared.sql, values, exc, connection.dialect.loaded_dbapi.Error,
            hide_parameters=connection.engine.hide_parameters, connection_invalidated=lost, dialect=connection.dialect,
        )
        if lost:
            connection.invalidate(exc)
        raise wrapped from exc
    if found is None:
        return None
    return prepared.row(*(value if convert is None else convert(value) for value, convert in zip(found, prepared.results, strict=True)))


def _settle(connection: Connection, dbapi_connection: Any, autocommit: bool) -> None:
    """The driver connection as it was, or invalidated when it cannot be: never raises, so the
    error that ended the statement (an exception from a signal handler can leave it running) wins."""
    from psycopg.pq import TransactionStatus  # here: SQLite users never load psycopg

    if dbapi_connection.broken or dbapi_connection.closed:
        return
    if dbapi_connection.info.transaction_status == TransactionStatus.IDLE:
        dbapi_connection.autocommit = autocommit
    else:
        connection.invalidate()
