"""Engines and units of work.

Nothing here runs at import time: an engine exists only once a shell asks for
one with the URL from the settings, so importing autofunnel never touches a
database and tests can point each case at its own.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

try:
    import fcntl
except ModuleNotFoundError:  # Windows: writers wait in SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import UpdateBase

from autofunnel.store import driver

_PLAIN_POSTGRES = ("postgres://", "postgresql://")
_SQLITE_BEGIN = "autofunnel_sqlite_begin"


def normalize_url(url: str) -> str:
    """Let users write the URL their hosting shows them.

    `postgres://` and driver-less `postgresql://` mean psycopg 3, the driver we
    ship; a URL naming its driver is left as the user wrote it.
    """
    for prefix in _PLAIN_POSTGRES:
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def backend_name(url: str) -> str:
    """`sqlite` or `postgresql`: what the user's URL points at, without its driver."""
    return make_url(normalize_url(url)).get_backend_name()


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other backends and in-memory databases."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.query.get("mode") == "memory" or str(parsed.database).startswith("file:"):
        return None
    return Path(str(parsed.database))


def make_engine(url: str, *, sqlite_foreign_keys: bool = True) -> Engine:
    """An engine tuned for how autofunnel uses each backend.

    SQLite runs in WAL mode so readers never wait for the writer, and waits up
    to 30 s for a busy lock instead of failing; a 64 MB page cache and memory-mapped
    reads keep a pass over a million-lead table as fast as over a small one. SQLAlchemy, not the sqlite3
    driver, emits BEGIN, so DDL and SELECTs are inside real transactions (the
    driver's legacy mode leaves them out). `sqlite_foreign_keys=False` is for
    migrations only: SQLite rebuilds a table to alter it, which foreign-key
    enforcement would block.

    On PostgreSQL every statement is planned for its actual parameters: psycopg
    prepares a statement after a few runs, and PostgreSQL's generic plan for
    `lead_id = ANY(:ids)` over a growing table was measured at 80 ms where the
    custom plan takes under 2 ms. Our statements work on whole batches, so
    planning each one costs nothing that shows. Nor is any compiled to machine
    code (JIT): an import chunk's tally insert, estimated just over the JIT
    threshold, spent 44 of its 97 ms compiling, and the reports at 1M leads
    take the same time with JIT as without it (2026-12-04).
    """
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url)
        _tune_sqlite(engine, foreign_keys=sqlite_foreign_keys)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"options": "-c plan_cache_mode=force_custom_plan -c jit=off"},
    )


def _tune_sqlite(engine: Engine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA cache_size=-65536")
            cursor.execute("PRAGMA mmap_size=268435456")
        finally:
            cursor.close()

        dbapi_connection.create_function("autofunnel_local_time", 2, local_time, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Straight to the driver, as `driver.run_alone` does on psycopg: every unit of work starts
        # here, and SQLAlchemy's execution path cost ~30 µs of the ~40 µs an empty transaction takes.
        statement = f"BEGIN {connection.get_execution_options().get(_SQLITE_BEGIN, '')}".strip()
        dbapi_connection = connection.connection.driver_connection
        error = connection.dialect.loaded_dbapi.Error
        try:
            dbapi_connection.execute(statement)
        except error as exc:
            lost = connection.dialect.is_disconnect(exc, connection.connection, None)
            wrapped = DBAPIError.instance(
                statement, None, exc, error,
                hide_parameters=connection.engine.hide_parameters, connection_invalidated=lost, dialect=connection.dialect,
            )
            if lost:
                connection.invalidate(exc)
            else:
                dbapi_connection.rollback()  # what SQLAlchemy does after a statement fails outside a transaction
            raise wrapped from exc


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_time(stored: str | None, zone: str) -> str | None:
    """SQLite's `autofunnel_local_time(moment, zone)`: a stored UTC moment as the wall-clock time
    in an IANA zone ('YYYY-MM-DD HH:MM:SS'), for `date()` and `strftime()` to cut into the seller's
    days; SQLite itself knows only UTC and the machine's own zone."""
    if stored is None:
        return None
    moment = datetime.fromisoformat(stored).replace(tzinfo=UTC)
    return moment.astimezone(_zone(zone)).strftime("%Y-%m-%d %H:%M:%S")


def writer(engine: Engine) -> Engine:
    """The same engine and pool, but its transactions take SQLite's write lock at BEGIN.

    A deferred transaction that reads and then writes can fail at once with
    "database is locked" when another process wrote in between, whatever the
    busy timeout; BEGIN IMMEDIATE waits for the lock first, so every unit of
    work that may write is safe across processes. On PostgreSQL it changes nothing.
    """
    return engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})


class Database:
    """One engine and the sessions made from it; what services are given."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend = engine.dialect.name
        self._writes = sessionmaker(bind=writer(engine), expire_on_commit=False)
        self._reads = sessionmaker(bind=engine, expire_on_commit=False)
        path = sqlite_path(engine.url.render_as_string(hide_password=False)) if fcntl is not None else None
        self._turn_file = None if path is None else Path(f"{path}-lock")
        self._turn_held = threading.local()

    @classmethod
    def from_url(cls, url: str) -> Database:
        return cls(make_engine(url))

    @contextmanager
    def transaction(self, *, rollback: bool = False) -> Iterator[Session]:
        """A unit of work: commits when the block ends, rolls back if it raises.

        `rollback=True` always rolls back: a dry run sees exactly what would be
        written, inside the real transaction, and keeps none of it.
        """
        with self._writer_turn(), self._writes() as session:
            session.begin()
            try:
                yield session
            except BaseException:
                session.rollback()
                raise
            if rollback:
                session.rollback()
            else:
                session.commit()

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On SQLite, wait for the other writers on this file at a file lock, not in SQLite's busy handler.

        A writer that finds SQLite's write lock taken polls for it in the busy
        handler, sleeping 1, 2, 5 … 25, 50, 100 ms between tries, so it wakes long
        after the lock is free, and one that keeps losing can wait a second and
        more. The file lock is tried every 0.2–2 ms instead: two web workers
        recording 1000-event batches, 20,000–21,600 events/s with batches waiting
        up to 1.6 s, became 22,500–24,400/s with none over 0.21 s. Every writer
        takes it (units of work and a worker's held connection alike), so none is
        starved by the others handing the lock on among themselves. SQLite's own
        lock stays what guarantees one writer at a time: a writer that has not had
        its turn after `TURN_PATIENCE` seconds (a holder stopped in a debugger) goes
        on to SQLite's wait, which ends in "database is locked" as before. A thread
        already holding its turn does not wait for itself.
        """
        if self._turn_file is None or getattr(self._turn_held, "held", False):
            yield
            return
        descriptor = os.open(self._turn_file, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            if _take_file_lock(descriptor, TURN_PATIENCE):
                self._turn_held.held = True
            try:
                yield
            finally:
                self._turn_held.held = False
        finally:
            os.close(descriptor)

    @contextmanager
    def held(self) -> Iterator[HeldConnection]:
        """One write connection for a run of short transactions (see `HeldConnection`)."""
        held = HeldConnection(writer(self.engine), self._writer_turn)
        try:
            yield held
        finally:
            held.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A consistent view for reports and lookups that never takes SQLite's write lock.

        Nothing written through it is kept: the session is rolled back when the block ends.
        """
        with self._reads() as session:
            yield session

    @contextmanager
    def look(self) -> Iterator[Connection]:
        """`read` on a plain connection, for the Core look-ups made on every scheduler pass
        ("is anything due?"): the ORM session around one short query cost as much as the query.
        Rolled back when the block ends, like `read`."""
        with self.engine.connect() as connection:
            connection.begin()
            yield connection

    def dispose(self) -> None:
        self.engine.dispose()


TURN_PATIENCE = 30.0
"""Seconds a SQLite writer waits for its turn at the file lock before it waits in SQLite's busy handler instead."""


def _take_file_lock(descriptor: int, patience: float) -> bool:
    """Take an exclusive `flock`, trying every 0.2–2 ms for up to `patience` seconds; whether it was taken."""
    deadline = time.monotonic() + patience
    pause = 0.0002
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.002)


class HeldConnection:
    """A write connection kept across many short transactions.

    A worker records every email in its own transaction; checking a connection
    out of the pool (and pinging it, on PostgreSQL) for each would add a round
    trip to every email. A database error drops the connection, so the next
    transaction starts on a fresh one: a restarted server costs a retry, not
    the batch.
    """

    def __init__(self, engine: Engine, turn: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        self._engine = engine
        self._turn = turn
        self._connection: Connection | None = None
        self._generic_plans = False
        self._generic_plans_set = False

    @property
    def is_postgres(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    def use_generic_plans(self) -> None:
        """From the next transaction on, let PostgreSQL reuse its plan of a repeated statement.

        The engine plans every statement for its parameters (see `make_engine`),
        which is right for statements over batches of ids and costs ~0.2 ms a run for
        the one-row statements a worker repeats for every email. Ask for this only
        once the batch-wide statements are done; the setting is reset before the
        connection goes back to the pool.
        """
        self._generic_plans = self.is_postgres

    def _plans_to_set(self) -> bool:
        """Plan reuse was asked for and the current connection does not have it yet."""
        return self._generic_plans and not self._generic_plans_set

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """Commits when the block ends, rolls back if it raises."""
        if self._connection is None:
            self._connection = self._engine.connect()
            self._generic_plans_set = False
        connection = self._connection
        setting = self._plans_to_set()
        try:
            with self._turn(), connection.begin():
                if setting:
                    connection.exec_driver_sql("SET plan_cache_mode = auto")
                yield connection
        except DBAPIError:
            self.close()
            raise
        if setting:
            self._generic_plans_set = True

    def execute_alone(self, statement: UpdateBase, params: dict[str, Any]) -> Any | None:
        """Run one statement as a transaction of its own; its first RETURNING row, or None.

        On PostgreSQL with psycopg the statement goes without BEGIN and COMMIT and
        without SQLAlchemy's per-run work (see `driver`); elsewhere it runs in a
        transaction like any other unit. Either way it commits whole or not at all.
        """
        held = self._connection
        if held is None or self._plans_to_set() or not driver.supports(held):
            with self.transaction() as connection:  # a new connection's first unit also sets it up
                return connection.execute(statement, params).first()
        try:
            return driver.run_alone(held, statement, params)
        except DBAPIError:
            self.close()
            raise
        except BaseException:
            if held.invalidated:  # interrupted mid-statement: the connection was not reusable
                self.close()
            raise

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if self._generic_plans_set and not connection.invalidated:
                with connection.begin():
                    connection.exec_driver_sql("RESET plan_cache_mode")
        except DBAPIError:
            connection.invalidate()
        finally:
            self._generic_plans_set = False
            connection.close()
