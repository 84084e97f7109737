"""What every benchmark starts from: the starter project in a temporary folder
and an empty, migrated database (SQLite there, or the PostgreSQL one given)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

from autofunnel.services.starter import init_project
from autofunnel.store.db import Database, backend_name, normalize_url
from autofunnel.store.migrate import upgrade


def fresh_project(prefix: str, database_url: str | None) -> tuple[Path, Path, str]:
    """(work folder, project folder, database URL); a PostgreSQL database is emptied first."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    project = work / "shop"
    init_project(project)
    url = database_url or f"sqlite:///{work / 'bench.db'}"
    if backend_name(url) == "postgresql":
        create_database_if_missing(url)
        db = Database.from_url(url)
        with db.engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        db.dispose()
    upgrade(url)
    return work, project, url


def create_database_if_missing(url: str) -> None:
    """A newcomer's machine has the role (CREATEDB, as `.ci/run` makes it) but not the bench database."""
    target = make_url(normalize_url(url))
    maintenance = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with maintenance.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            ).first()
            if exists is None:
                connection.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
    finally:
        maintenance.dispose()


def history_runtime(database_url: str, prefix: str) -> Any:
    """The starter project over a database `gen_report_data.py` filled, on a clock stopped at its last day,
    so "the last 30 days" hold the history's latest cohorts."""
    from datetime import timedelta

    from gen_report_data import DAYS, EPOCH

    from autofunnel.clock import FixedClock
    from autofunnel.config import load_settings
    from autofunnel.services.runtime import Runtime

    project = Path(tempfile.mkdtemp(prefix=prefix)) / "shop"
    init_project(project)
    settings = load_settings(project, environ={"AUTOFUNNEL_DATABASE_URL": database_url, "AUTOFUNNEL_SECRET_KEY": "bench-secret-0123456789"})
    return Runtime.open(settings, FixedClock(EPOCH + timedelta(days=DAYS - 1, hours=12)))
