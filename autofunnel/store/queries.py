"""Small dialect-aware building blocks the services share."""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ColumnElement, Insert, Join, String, Table, Text, Update, any_, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import _de_clone
from sqlalchemy.sql.visitors import InternalTraversal

from autofunnel.store.types import UTCDateTime

Executor = Session | Connection
"""Where a statement runs: a unit of work's session, or a worker's held connection."""


def dialect_of(session: Executor) -> str:
    return session.dialect.name if isinstance(session, Connection) else session.get_bind().dialect.name


def _connection_of(session: Executor) -> Connection:
    return session if isinstance(session, Connection) else session.connection()


def insert_ignoring(session: Executor, table: Table, conflict: Sequence[str]) -> Insert:
    """`INSERT … ON CONFLICT (cols) DO NOTHING` for the session's backend: idempotent writes."""
    return _insert_ignoring(dialect_of(session), table, tuple(conflict))


@functools.lru_cache(maxsize=64)
def _insert_ignoring(dialect: str, table: Table, conflict: tuple[str, ...]) -> Insert:
    """Built once per backend, table and key (statements are immutable: callers' `.values()` and
    `.returning()` make new ones); every subscription runs one."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    raise NotImplementedError(f"autofunnel supports SQLite and PostgreSQL, not {dialect}")


def is_postgres(session: Executor) -> bool:
    return dialect_of(session) == "postgresql"


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


class OuterFirst(Join):
    """An inner join SQLite must run with its left side as the outer loop (`CROSS JOIN … ON`).

    For a few rows that each find their partner by an index among many: the report's
    unsubscribes and refunds, each pointing at one email among the period's million.
    Without statistics, SQLite's planner takes an indexed range of those emails for
    the smaller side and probes every one of them for events (11 s against 0.1 s at
    1M leads). PostgreSQL, which keeps statistics, gets a plain join.
    """

    inherit_cache = True
    _traverse_internals = [*Join._traverse_internals, ("index", InternalTraversal.dp_string)]

    def __init__(self, left: Any, right: Any, onclause: Any, *, index: str | None = None) -> None:
        super().__init__(left, right, onclause)
        self.index = index
        """An index of the right side SQLite must find its rows with (`INDEXED BY`): a range of
        the left side's rows can look cheaper to it than one lead's rows."""


@compiles(OuterFirst, "sqlite")
def _cross_join(join: OuterFirst, compiler: Any, asfrom: bool = False, from_linter: Any = None, **kw: Any) -> str:
    # SQLAlchemy's `visit_join` with `CROSS JOIN` for `JOIN`: it has no flag for the keyword.
    if from_linter:
        from_linter.edges.update(itertools.product(_de_clone(join.left._from_objects), _de_clone(join.right._from_objects)))
    return (
        join.left._compiler_dispatch(compiler, asfrom=True, from_linter=from_linter, **kw)
        + " CROSS JOIN "
        + join.right._compiler_dispatch(compiler, asfrom=True, from_linter=from_linter, **kw)
        + (f" INDEXED BY {join.index}" if join.index else "")
        + " ON "
        + join.onclause._compiler_dispatch(compiler, from_linter=from_linter, **kw)
    )


class Unindexed(ColumnElement[Any]):
    """A column SQLite must not look rows up by (`+column`): the type of an event, when the rows
    to count are a batch's ids. Without statistics SQLite takes `type = 'purchase'` for a few
    rows and walks every purchase ever recorded to find the batch's (15 s a batch of 100 at 1M
    leads) instead of fetching the batch by id. PostgreSQL, which keeps statistics, gets the column,
    unless `postgres` (a text column: `column || ''`): until a fresh database's first ANALYZE every
    index looks alike to it too."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement), ("postgres", InternalTraversal.dp_boolean)]

    def __init__(self, column: Any, *, postgres: bool = False) -> None:
        self.column = column
        self.type = column.type
        self.postgres = postgres


@compiles(Unindexed)
def _plain(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


@compiles(Unindexed, "postgresql")
def _appended(element: Unindexed, compiler: Any, **kw: Any) -> str:
    column = str(compiler.process(element.column, **kw))
    return f"({column} || '')" if element.postgres else column


@compiles(Unindexed, "sqlite")
def _unary_plus(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.column, **kw))


def among_param(column: Any, name: str, *, pg: bool, text: bool = False) -> ColumnElement[bool]:
    """`column` among the list passed as parameter `name` when the statement runs, so one built
    statement serves every batch: on PostgreSQL `= ANY(:name)`, one array parameter whose plan
    does not grow with the batch (see `among`; `text` for a list of strings); on SQLite an IN
    list expanded per run."""
    if pg:
        return column == any_(bindparam(name, type_=postgresql.ARRAY(Text() if text else BigInteger())))
    return column.in_(bindparam(name, expanding=True))


def bulk_update(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Update many rows by primary key, each with its own values (`{"id": …, column: value}`).
    All rows name the same columns.

    PostgreSQL: one `UPDATE … FROM unnest(…)` over the columns as arrays (see
    `_postgres_insert`); run once per row, even pipelined, every row's UPDATE was
    planned afresh (`force_custom_plan`): 1000 enrollments of a scheduler pass took
    36 ms, against 15 ms this way. SQLite: one prepared statement run for every row.
    """
    if not rows:
        return
    if len({row["id"] for row in rows}) != len(rows):
        raise ValueError(f"{table.name}: a bulk update names a row twice; which values win would be arbitrary")
    names = [name for name in rows[0] if name != "id"]
    if is_postgres(session):
        _postgres_update(_connection_of(session), table, rows, names)
        return
    _connection_of(session).execute(  # a Table's UPDATE: the session would only pass it on, at ~55 µs a call
        _update_by_id(table, tuple(names)), [{"b_id": row["id"], **{name: row[name] for name in names}} for row in rows],
    )


@functools.lru_cache(maxsize=64)
def _update_by_id(table: Table, names: tuple[str, ...]) -> Update:
    """`bulk_update`'s SQLite statement, built once per table and columns: every scheduler pass runs it."""
    return update(table).where(table.c.id == bindparam("b_id")).values({name: bindparam(name) for name in names})


def insert_returning(
    session: Session, table: Table, rows: Sequence[dict[str, Any]], returning: Sequence[str], *, conflict: Sequence[str] = ()
) -> list[Any]:
    """Insert many rows (all naming the same columns) and return `returning` of those
    written, skipping rows that clash on `conflict` when given."""
    if not rows:
        return []
    if not is_postgres(session):
        return _sqlite_insert(session, table, rows, conflict, returning)
    return _postgres_insert(session, table, rows, conflict, returning)


def bulk_insert(session: Executor, table: Table, rows: Sequence[dict[str, Any]], *, conflict: Sequence[str] = ()) -> None:
    """Insert many rows (all naming the same columns), skipping clashes on `conflict` when given."""
    if not rows:
        return
    if is_postgres(session):
        _postgres_insert(session, table, rows, conflict, ())
        return
    _sqlite_insert(session, table, rows, conflict, ())


def _postgres_insert(
    session: Executor, table: Table, rows: Sequence[dict[str, Any]], conflict: Sequence[str], returning: Sequence[str]
) -> list[Any]:
    """PostgreSQL: the rows travel column by column as typed arrays through `unnest`,
    one short statement whatever the batch size, each array in psycopg's binary format.

    SQLAlchemy's multi-row `VALUES` is a new statement of thousands of placeholders
    per batch, which psycopg parses in Python every time, and `executemany` is one
    statement per row, even pipelined (measured on 1000 event rows: 110–170 ms and
    ~45 ms against ~9 ms here). Binary arrays matter as much: psycopg escapes a
    text-format array element by element in Python (27 ms of those 1000 rows). A
    column whose rows all hold the same value (a batch's `now`, a sequence's name,
    a status) goes as that one value, not as an array of copies: 900 enrollment
    rows are then 3 arrays, not 13. An array holds one Python type, so whole
    numbers among fractions go as floats. JSON columns go as JSON text, cast on
    the server. Text goes as TEXT, so that storing it in its `VARCHAR(n)` column
    refuses an over-long value (a cast to `VARCHAR(n)` would cut it silently).
    Columns left out take their server defaults.
    """
    connection = _connection_of(session)
    names = list(rows[0])
    written: list[Any] = []
    for part in chunks(list(rows), 5000):
        params, source, selects = _as_arrays(connection, table, names, part)
        sql = f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {', '.join(selects)}{source}"
        if conflict:
            sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
        if returning:
            sql += f" RETURNING {', '.join(returning)}"
        with _generic_plans_for_key_checks(connection, len(part) * len(table.foreign_keys)):
            result = connection.exec_driver_sql(sql, params)
            if returning:
                written.extend(result.all())
    return written


def _postgres_update(connection: Connection, table: Table, rows: Sequence[dict[str, Any]], names: Sequence[str]) -> None:
    for part in chunks(list(rows), 5000):
        params, source, selects = _as_arrays(connection, table, ["id", *names], part)
        columns = ", ".join(f"{value} AS {name}" for name, value in zip(["id", *names], selects, strict=True))
        assignments = ", ".join(f"{name} = v.{name}" for name in names)
        connection.exec_driver_sql(
            f"UPDATE {table.name} SET {assignments} FROM (SELECT {columns}{source}) AS v WHERE {table.name}.id = v.id", params
        )


def _as_arrays(connection: Connection, table: Table, names: Sequence[str], part: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], str, list[str]]:
    """The parameters, the `FROM` clause and one SQL value per column of `part`'s rows, each
    column one typed binary array through `unnest`, or one value when every row holds it."""
    dialect = connection.dialect
    params: dict[str, Any] = {}
    arrays: list[str] = []
    selects: list[str] = []
    for index, name in enumerate(names):
        type_sql = table.c[name].type.compile(dialect=dialect)
        data = [row[name] for row in part]
        first = data[0]
        is_json = type_sql in ("JSON", "JSONB")
        if is_json:
            # Python's == finds {"gift": True} equal to {"gift": 1}: only the same JSON text is one value.
            data = _json_texts(_json_text, data)
            same = data.count(data[0]) == len(data)
        else:
            # Counted in C: the per-row generator this replaced was a tenth of an import's Python time.
            same = data.count(first) == len(data) and len(set(map(type, data))) == 1
            if isinstance(table.c[name].type, UTCDateTime):
                if any(isinstance(value, datetime) and value.utcoffset() is None for value in ({first} if same else set(data))):
                    raise ValueError(f"{table.name}.{name}: naive datetimes cannot be stored; give them a timezone (UTC)")
            elif not same and {type(value) for value in data if value is not None} == {int, float}:
                data = [None if value is None else float(value) for value in data]
        element = "TEXT" if is_json or isinstance(table.c[name].type, String) else type_sql
        if same:
            params[f"p{index}"] = data[0]
            value = f"CAST(%(p{index})b AS {element})"
        else:
            params[f"p{index}"] = data
            arrays.append(f"CAST(%(p{index})b AS {element}[])")
            value = f"v.c{len(arrays) - 1}"
        selects.append(f"CAST({value} AS {type_sql})" if is_json else value)
    source = (
        f" FROM unnest({', '.join(arrays)}) AS v({', '.join(f'c{i}' for i in range(len(arrays)))})"
        if arrays else f" FROM generate_series(1, {len(part)})"
    )
    return params, source, selects


KEY_CHECKS_WORTH_A_SWITCH = 100
"""Foreign-key checks (rows × keys) from which one insert plans them once rather than per row;
below it, the two extra round trips of the switch cost more than they save."""


@contextmanager
def _generic_plans_for_key_checks(connection: Connection, checks: int) -> Iterator[None]:
    """Let PostgreSQL reuse its plan of the foreign-key checks for the length of one insert.

    Each inserted row's foreign keys are checked by a query that PostgreSQL keeps
    prepared; the engine's `plan_cache_mode=force_custom_plan` (see `make_engine`)
    has it planned again for every row, which was most of the server's time of a
    batch of events: 900 enrollment rows spent 21 of 25 ms in their three checks,
    8 µs a check, against 12 ms for the whole insert with the plan reused. The
    mode the transaction had is put back after the insert, so the batch-wide
    statements that follow are planned for their parameters as before; an insert
    that fails aborts the transaction, and the rollback undoes the switch.
    """
    if checks < KEY_CHECKS_WORTH_A_SWITCH:
        yield
        return
    before = connection.exec_driver_sql(
        "SELECT current_setting('plan_cache_mode'), set_config('plan_cache_mode', 'auto', true)"
    ).scalar_one()
    yield
    connection.exec_driver_sql("SELECT set_config('plan_cache_mode', %(mode)s, true)", {"mode": before})


SQLITE_MAX_VARIABLES = 32766
ROWS_PER_STATEMENT = 256
"""At most this many rows in one multi-row SQLite insert: 250–1000 rows a statement insert 5000 deliveries fastest (10.3–10.6 µs a row)."""


def _json_text(value: Any) -> str | None:
    """A JSON value as PostgreSQL is sent it: text, cast on the server; SQL NULL for None."""
    return None if value is None else json.dumps(value)


def _json_texts(process: Any, values: list[Any]) -> list[Any]:
    """JSON values through the column's processor, each distinct value once.

    A batch repeats its JSON values (an enrollment's empty `visits`, an event's
    properties, a list's few tag sets): an import chunk serialized eight per lead,
    a quarter of its Python time on SQLite and a tenth on PostgreSQL. A value is
    known again by its `repr`, which for JSON data (dicts, lists, text, numbers,
    booleans, None) tells apart everything `json.dumps` tells apart (`1`, `1.0`
    and `True` included)."""
    text_of: dict[str, Any] = {}
    texts = []
    for value in values:
        key = repr(value)
        text = text_of.get(key, text_of)
        if text is text_of:
            text = text_of[key] = process(value)
        texts.append(text)
    return texts


@functools.lru_cache(maxsize=256)
def _sqlite_insert_parts(
    table: Table, names: tuple[str, ...], conflict: tuple[str, ...], dialect: Any
) -> tuple[str, str, str, tuple[tuple[str, Any], ...]]:
    """An insert's SQL pieces and each column's bind processor (with how its values repeat), made
    once per table, columns and dialect: the same few inserts run on every pass and every email,
    and making the processors again took a third of a small insert's Python time."""
    processors = []
    for name in names:
        column_type = table.c[name].type
        kind = "moment" if isinstance(column_type, UTCDateTime) else "json" if isinstance(column_type, JSON) else "plain"
        processors.append((kind, column_type.dialect_impl(dialect).bind_processor(dialect)))
    head = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES "
    tail = f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING" if conflict else ""
    placeholder = "(" + ", ".join("?" for _ in names) + ")"
    return head, tail, placeholder, tuple(processors)


def _sqlite_insert(
    session: Executor, table: Table, rows: Sequence[dict[str, Any]], conflict: Sequence[str], returning: Sequence[str]
) -> list[Any]:
    """SQLite: the rows converted by the columns' own SQLAlchemy bind processors, then
    handed to the driver in one go.

    The values stored are exactly what SQLAlchemy would store; what is skipped is
    its per-row, per-parameter bookkeeping, which was three quarters of the cost
    of a 1000-row insert (about 30 µs a row against 8). Values are converted column
    by column (`map`): 15–20 % less than row by row (1000 event rows: 4.7 against
    5.4 ms). A batch's rows mostly share their moments (`now`), so each distinct
    moment is converted once: equal aware datetimes are the same instant, stored
    as the same UTC text; likewise JSON values (see `_json_texts`). Rows go as
    multi-row VALUES of `ROWS_PER_STATEMENT` rows; returned columns must be plain
    integers or text. The driver's executemany cannot return rows, and it runs the
    statement once per row, which re-evaluates per row what SQLite does once per
    run: each `CHECK (status IN (…))` builds its list anew (5000 delivery rows, two
    such checks: 17.7 µs a row against 10.0 in multi-row statements, 2026-12-05;
    enrollments, three checks, 15.3 against 10.0; a timeline row 4.0 against 2.9).
    Without RETURNING, the rows short of a full statement (a small batch, a large
    one's remainder) go through executemany, so the same few statement texts recur
    and the driver's cache of compiled statements stays small: statements of as
    many rows as SQLite takes parameters (2730 of twelve columns), each remainder a
    new text, were slower (13.8 against 10.3 µs a delivery row), and a million-row
    import peaked at 396 MB with them against 251 MB with these.
    """
    connection = _connection_of(session)
    names = tuple(rows[0])
    head, tail, placeholder, processors = _sqlite_insert_parts(table, names, tuple(conflict), connection.dialect)
    columns = [[row[name] for row in rows] for name in names]
    for index, (kind, process) in enumerate(processors):
        if process is None:
            continue
        if kind == "moment":
            text_of = {moment: process(moment) for moment in set(columns[index])}
            columns[index] = [text_of[moment] for moment in columns[index]]
        elif kind == "json":
            columns[index] = _json_texts(process, columns[index])
        else:
            columns[index] = list(map(process, columns[index]))
    values = list(zip(*columns))
    if returning:
        tail += f" RETURNING {', '.join(returning)}"
    written: list[Any] = []
    per_statement = max(1, min(ROWS_PER_STATEMENT, SQLITE_MAX_VARIABLES // len(names)))
    for part in chunks(values, per_statement):
        if not returning and len(part) < per_statement:
            connection.exec_driver_sql(head + placeholder + tail, part)
            continue
        flat = [value for row in part for value in row]
        result = connection.exec_driver_sql(head + ", ".join(placeholder for _ in part) + tail, tuple(flat))
        if returning:
            written.extend(result.all())
    return written
