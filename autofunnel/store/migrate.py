"""Alembic, driven from code.

`autofunnel db upgrade`, `autofunnel run` and the tests migrate through these
functions rather than an `alembic.ini`, so an installed package can migrate its
own database from anywhere. The whole upgrade is one transaction (PostgreSQL
and, thanks to SQLAlchemy emitting BEGIN, SQLite too): it lands completely or
not at all. Several machines starting at once are serialized by a lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from autofunnel.errors import AutofunnelError
from autofunnel.store.db import make_engine, sqlite_path, writer

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x6175746F66756E6C  # "autofunl": a PostgreSQL advisory lock only migrations take


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration built in code; `connection` is what env.py migrates."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision this version of autofunnel expects its database to be at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "autofunnel ships at least one migration"
    return head


def known_revision(revision: str) -> bool:
    """Whether this version of autofunnel has a migration with that id (a newer one may not)."""
    script = ScriptDirectory.from_config(alembic_config())
    return any(rev.revision == revision for rev in script.walk_revisions())


@contextmanager
def migration_connection(url: str) -> Iterator[Connection]:
    """One write transaction holding the migration lock, committed only if the block succeeds.

    On SQLite foreign keys are off while migrating (table rebuilds would trip
    them) and checked in full before commit, so a migration cannot leave
    dangling references behind.
    """
    engine = make_engine(url, sqlite_foreign_keys=False)
    try:
        with writer(engine).begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            yield connection
            if connection.dialect.name == "sqlite":
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
                if broken is not None:
                    raise AutofunnelError(
                        f"migration left a broken foreign key in table {broken[0]!r}; nothing was changed"
                    )
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to `revision`; already there is fine."""
    with migration_connection(url) as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(url: str, revision: str) -> None:
    """Undo migrations down to `revision` (`base` empties the database); for developers and tests."""
    with migration_connection(url) as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(url: str | Engine) -> str | None:
    """The revision the database is at; None when it was never migrated.

    A SQLite file that does not exist is reported as unmigrated without being
    created, so asking never leaves an empty database behind.
    """
    if isinstance(url, Engine):
        with url.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def pending(url: str | Engine) -> bool:
    """Whether the database is not at this code's head, so serving it would be unsafe."""
    return current_revision(url) != head_revision()
