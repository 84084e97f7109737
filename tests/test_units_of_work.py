"""Units of work from several threads and processes on one database."""

from __future__ import annotations

import fcntl
import os
import threading

from datetime import timedelta
from typing import Any

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from autofunnel.store import driver
from autofunnel.store.db import Database, sqlite_path
from autofunnel.store.models import Lead, TimelineEntry
from test_queries import WHEN


def add_leads(db: Database, prefix: str, count: int) -> None:
    for number in range(count):
        with db.transaction() as session:
            session.execute(insert(Lead), [{"email": f"{prefix}{number}@example.com", "status": "active", "created_at": WHEN, "updated_at": WHEN}])


def test_writers_in_several_threads_and_engines_all_commit(migrated_db: Database) -> None:
    others = [Database(migrated_db.engine), Database.from_url(migrated_db.engine.url.render_as_string(hide_password=False))]
    errors: list[BaseException] = []

    def write(db: Database, prefix: str) -> None:
        try:
            add_leads(db, prefix, 25)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(db, f"w{n}-")) for n, db in enumerate([migrated_db, *others])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    others[1].dispose()
    assert errors == []
    with migrated_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 75


def test_a_unit_of_work_opened_inside_another_does_not_wait_for_its_own_thread(migrated_db: Database) -> None:
    """On SQLite the writers take turns by a file lock; the thread that holds the turn keeps it."""
    finished = threading.Event()

    def nested() -> None:
        with migrated_db.transaction() as outer:
            outer.execute(select(func.count()).select_from(Lead))
            with migrated_db.transaction():
                pass
        finished.set()

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(20)
    assert finished.is_set()


@pytest.mark.sqlite
def test_a_workers_held_connection_takes_its_turn_like_every_other_writer(migrated_db: Database) -> None:
    """Writers waiting at the file lock hand SQLite's lock on to each other; a held connection
    that waited in SQLite's busy handler instead could be starved by them, so it takes its turn too."""
    lock_file = f"{sqlite_path(migrated_db.engine.url.render_as_string(hide_password=False))}-lock"

    def turn_is_free() -> bool:
        descriptor = os.open(lock_file, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(descriptor)

    with migrated_db.held() as held:
        with held.transaction() as connection:
            connection.execute(select(func.count()).select_from(Lead))
            assert not turn_is_free()
        assert turn_is_free()


def _noted_statement() -> Any:
    """One INSERT … RETURNING with a time (a type that converts its values) and JSON."""
    t = TimelineEntry.__table__
    return insert(t).values(
        lead_id=bindparam("lead_id"), at=bindparam("at", type_=t.c.at.type), decision="note",
        reason=bindparam("reason"), detail=bindparam("detail", type_=t.c.detail.type),
    ).returning(t.c.id, t.c.at, t.c.detail)


def test_a_statement_run_alone_commits_whole_and_returns_its_row(migrated_db: Database) -> None:
    """`execute_alone` on either backend: its row back, committed at once, types converted both ways."""
    add_leads(migrated_db, "alone", 1)
    with migrated_db.read() as session:
        lead_id = session.scalar(select(Lead.id))
    with migrated_db.held() as held:
        rows = [held.execute_alone(_noted_statement(), {"lead_id": lead_id, "at": WHEN, "reason": f"run {n}", "detail": {"n": n, "gift": True}}) for n in range(3)]
        with migrated_db.read() as session:  # another connection sees all three before the held one is given back
            seen = session.execute(select(TimelineEntry.reason, TimelineEntry.at, TimelineEntry.detail).order_by(TimelineEntry.id)).all()
    assert [row.detail for row in rows] == [{"n": n, "gift": True} for n in range(3)]
    assert all(row.at == WHEN and row.at.utcoffset() == timedelta(0) for row in rows)
    assert [tuple(row) for row in seen] == [(f"run {n}", WHEN, {"n": n, "gift": True}) for n in range(3)]


@pytest.mark.postgres
def test_a_statement_run_alone_goes_without_a_transaction_and_fails_as_sqlalchemy_says(migrated_db: Database) -> None:
    """On psycopg the statement is sent in autocommit (no BEGIN, no COMMIT); its errors are
    SQLAlchemy's, a lost server an OperationalError the next unit recovers from, and the
    connection goes back to the pool out of autocommit."""
    add_leads(migrated_db, "alone", 1)
    with migrated_db.read() as session:
        lead_id = session.scalar(select(Lead.id))
    params = {"lead_id": lead_id, "at": WHEN, "reason": "x", "detail": None}
    with migrated_db.engine.connect() as connection, migrated_db.engine.connect() as observer:
        assert driver.supports(connection)
        raw = connection.connection.driver_connection
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        connection.commit()

        def last_statement() -> str:
            text = observer.exec_driver_sql(f"SELECT query FROM pg_stat_activity WHERE pid = {pid}").scalar()
            observer.rollback()
            return str(text).split()[0]

        assert last_statement() == "COMMIT"
        assert driver.run_alone(connection, _noted_statement(), params) is not None
        assert last_statement() == "INSERT"  # no COMMIT after it, nor BEGIN before it
        assert raw.info.transaction_status == TransactionStatus.IDLE and raw.autocommit is False  # committed, no transaction left open
        with pytest.raises(IntegrityError):
            driver.run_alone(connection, _noted_statement(), params | {"lead_id": lead_id + 1000})
        assert not connection.invalidated and raw.info.transaction_status == TransactionStatus.IDLE
        with pytest.raises(ValueError, match="RETURNING"):
            driver.run_alone(connection, update(Lead.__table__).values(status="active"), {})
    with migrated_db.held() as held:
        held.execute_alone(_noted_statement(), params)  # the first unit of a connection sets it up
        with held.transaction() as connection:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with migrated_db.engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(OperationalError):
            held.execute_alone(_noted_statement(), params)
        assert held.execute_alone(_noted_statement(), params) is not None
    with migrated_db.read() as session:
        assert session.scalar(select(func.count()).select_from(TimelineEntry)) == 3
    with migrated_db.engine.connect() as connection:
        assert connection.connection.driver_connection.autocommit is False

