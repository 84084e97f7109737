"""Opening and migrating the database, with the failures a user can act on.

Every long-running shell (web, worker, scheduler) and every command that reads
or writes opens the database through `open_database`, which refuses a schema
that is not exactly what this code expects: serving an old schema corrupts data
quietly, where refusing costs one `autofunnel db upgrade`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import make_url
from sqlalchemy.exc import OperationalError

from autofunnel.errors import DatabaseUnavailableError, NotMigratedError, UnknownRevisionError
from autofunnel.store.db import Database, backend_name, normalize_url, sqlite_path
from autofunnel.store.migrate import current_revision, head_revision, known_revision, upgrade


@dataclass(frozen=True)
class DatabaseStatus:
    backend: str
    revision: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.revision == self.head


def _safe(url: str) -> str:
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


@contextmanager
def _reachable(url: str) -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise DatabaseUnavailableError(f"cannot connect to the database at {_safe(url)}: {reason}") from None


def _require_current(revision: str | None) -> None:
    head = head_revision()
    if revision == head:
        return
    if revision is None:
        raise NotMigratedError()
    if not known_revision(revision):
        raise UnknownRevisionError(
            f"the database is at revision {revision}, which this autofunnel does not know; "
            "it was migrated by a newer version"
        )
    raise NotMigratedError(
        f"database is at revision {revision}, this autofunnel needs {head}; run `autofunnel db upgrade`"
    )


def database_status(url: str) -> DatabaseStatus:
    """Where the database's schema stands against this code's migrations."""
    with _reachable(url):
        revision = current_revision(url)
    return DatabaseStatus(backend=backend_name(url), revision=revision, head=head_revision())


def upgrade_database(url: str) -> DatabaseStatus:
    """Migrate to head, creating a SQLite file's folder first; running it again is harmless."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    before = database_status(url)
    if before.revision is not None and not known_revision(before.revision):
        _require_current(before.revision)
    upgrade(url)
    return database_status(url)


def open_database(url: str) -> Database:
    """A Database ready for services, or a one-line reason why not.

    A SQLite file that does not exist is reported as unmigrated rather than
    silently created empty.
    """
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise NotMigratedError()
    db = Database.from_url(url)
    try:
        with _reachable(url):
            revision = current_revision(db.engine)
        _require_current(revision)
    except BaseException:
        db.dispose()
        raise
    return db


T = TypeVar("T")
log = logging.getLogger(__name__)


def through_outage(work: Callable[[], T], *, for_seconds: float, what: str) -> T:
    """Run one unit of work, trying again while the database does not answer.

    A PostgreSQL restart takes a few seconds; a worker that gave up at once would
    leave an email it had already handed to SMTP unrecorded (and so `interrupted`).
    Only units of work that are safe to run twice come here: each is a
    conditional UPDATE (or one statement of them) that does nothing the second
    time. The one thing a second run cannot do is recognise its own first one:
    a claim that committed but whose answer was lost with the server is not won
    again, and that email ends `failed: interrupted` after its lease, unsent.
    """
    deadline = time.monotonic() + for_seconds
    pause = 0.2
    while True:
        try:
            return work()
        except OperationalError as exc:
            if time.monotonic() + pause > deadline:
                raise
            reason = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else type(exc).__name__
            log.warning("database did not answer while %s (%s); trying again in %.1f s", what, reason, pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
