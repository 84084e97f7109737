"""Units of work from several threads and processes on one database."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest
from sqlalchemy import func, insert, select

from autofunnel.store.db import Database, sqlite_path
from autofunnel.store.models import Lead
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
