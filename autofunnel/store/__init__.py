"""Storage: typed models, engines and units of work, and the migrations that shape the schema."""

from autofunnel.store.db import Database, make_engine, normalize_url

__all__ = ["Database", "make_engine", "normalize_url"]
