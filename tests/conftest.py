"""Shared fixtures.

The suite runs once per backend. With no variables it uses SQLite in a temporary
folder. With `AUTOFUNNEL_TEST_DATABASE_URL` (and `AUTOFUNNEL_TEST_BROKER_URL`) it runs
against those servers, and a server that does not answer is a failure, never a skip:
a green run must mean the code was proved on that backend.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from autofunnel.store.db import Database

pytest_plugins = ["smtp_sink"]

TEST_DATABASE_URL = os.environ.get("AUTOFUNNEL_TEST_DATABASE_URL", "")
TEST_BROKER_URL = os.environ.get("AUTOFUNNEL_TEST_BROKER_URL", "")
ON_POSTGRES = TEST_DATABASE_URL.startswith(("postgres://", "postgresql"))


def pytest_report_header(config: pytest.Config) -> str:
    backend = "postgresql" if ON_POSTGRES else "sqlite"
    return f"autofunnel backend: {backend}; broker: {TEST_BROKER_URL or 'server-less'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of PostgreSQL-only behaviour (SKIP LOCKED races) are left out of the SQLite run,
    and run, never skipped, on the PostgreSQL run; tests of SQLite-only behaviour (its writers'
    file lock) the other way round."""
    other = "sqlite" if ON_POSTGRES else "postgres"
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker(other) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """Create a throw-away database on the test server, yield its URL, then drop it."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    from autofunnel.store.db import normalize_url

    server = make_url(normalize_url(admin_url))
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"af_{secrets.token_hex(8)}"
    problem = None
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    except OperationalError as exc:
        problem = str(exc.orig or exc).strip().splitlines()[0]
    if problem is not None:
        admin.dispose()
        pytest.fail(
            f"AUTOFUNNEL_TEST_DATABASE_URL is set but PostgreSQL at {server.render_as_string(hide_password=True)} "
            f"did not answer: {problem}",
            pytrace=False,
        )
    try:
        yield (
            server.set(database=name)
            .render_as_string(hide_password=False)
            .replace("postgresql+psycopg://", "postgresql://", 1)
        )
    finally:
        _drop_database(admin, name)
        admin.dispose()


def _drop_database(admin: Any, name: str) -> None:
    """Drop a test database; PostgreSQL's autovacuum may be visiting it for a moment.

    `WITH (FORCE)` cannot end an autovacuum worker for a non-superuser, so a refused
    drop is tried again shortly; a database that still cannot be dropped is left
    behind (named af_…, harmless) rather than failing a test that passed.
    """
    import time

    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    for _ in range(50):
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError:
            time.sleep(0.1)


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """An empty database of this run's backend, as a plain URL a user would write."""
    if ON_POSTGRES:
        yield from _fresh_postgres_database(TEST_DATABASE_URL)
    else:
        yield f"sqlite:///{tmp_path / 'autofunnel.db'}"


@pytest.fixture
def migrated_db(database_url: str) -> Iterator[Database]:
    """A Database on `database_url` migrated to head, disposed after the test."""
    from autofunnel.store.db import Database
    from autofunnel.store.migrate import upgrade

    upgrade(database_url)
    db = Database.from_url(database_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """The starter project (yoga funnel, abandoned-cart sequence) in a fresh folder."""
    from autofunnel.services.starter import init_project

    directory = tmp_path / "shop"
    init_project(directory)
    return directory


@pytest.fixture
def runtime_factory(database_url: str) -> Iterator[Any]:
    """Build Runtimes on one migrated database: `make(project_dir, smtp_url, clock, **settings)`.

    Open tracking is on, since most tests follow opens; a setting given as None is left
    unset, so its default applies (`track_opens=None`: the product's default, off).

    Several runtimes on the same database stand for several processes (each has
    its own engine and connections).
    """
    from autofunnel.config import load_settings
    from autofunnel.services.runtime import Runtime
    from autofunnel.store.migrate import upgrade

    upgrade(database_url)
    made: list[Any] = []

    def make(project: Path, smtp_url: str, clock: Any, **extra: str | None) -> Any:
        settings = {
            "database_url": database_url, "smtp_url": smtp_url, "base_url": "http://testserver",
            "secret_key": "test-secret-key-0123456789", "track_opens": "true", **extra,
        }
        environ = {f"AUTOFUNNEL_{key.upper()}": value for key, value in settings.items() if value is not None}
        runtime = Runtime.open(load_settings(project, environ=environ), clock)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()
