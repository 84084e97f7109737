"""Alembic's entry point for autofunnel's migrations.

Called two ways: by `autofunnel.store.migrate`, which passes an open connection
in `config.attributes["connection"]`, and by developers running `alembic` at the
repository root (for `revision --autogenerate`), where the URL comes from
`sqlalchemy.url` or else from autofunnel's own settings.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import JSON
from sqlalchemy.engine import Connection

from autofunnel.store.db import backend_name, normalize_url
from autofunnel.store.migrate import migration_connection
from autofunnel.store.models import Base, on_backend
from autofunnel.store.types import UTCDateTime

config = context.config

if config.config_file_name is not None and config.file_config.has_section("loggers"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write our column types as plain SQLAlchemy ones, so a revision never imports
    the models' code and stays valid after that code changes."""
    if kind != "type":
        return False
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, JSON):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return "sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')"
    return False


def _options(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": Base.metadata,
        "compare_type": True,
        "compare_server_default": True,
        "render_as_batch": dialect_name == "sqlite",
        "render_item": _render_item,
        "include_object": on_backend(dialect_name),
    }


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from autofunnel.config import load_settings

        url = load_settings().resolved_database_url
    return normalize_url(url)


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, **_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    url = _url()
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_options(backend_name(url)))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    with migration_connection(_url()) as connection:
        _migrate(connection)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
