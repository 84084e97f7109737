"""What every service call needs, built once by a shell (CLI, web app, worker).

A `Runtime` bundles the settings, the database, the loaded project and the
clock. Services take it as their first argument, so a test, `tick --now` or a
simulation swaps the clock or the database without touching the services.
"""

from __future__ import annotations

import gc
import os
import random
import secrets
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from autofunnel.clock import Clock, SystemClock
from autofunnel.config import Settings
from autofunnel.domain.model import Flow, Project
from autofunnel.errors import ConfigError, NotFoundError
from autofunnel.services.database import open_database
from autofunnel.services.broker import Broker, broker_for
from autofunnel.services.project import load_project
from autofunnel.services.reload import ProjectWatch
from autofunnel.services.send_pace import Pace, pace_for
from autofunnel.services.write_behind import WriteBehind
from autofunnel.mail.render import Renderer
from autofunnel.mail.transport import Transport, transport_from_url
from autofunnel.store.db import Database
from autofunnel.tokens import Tokens

SECRET_FILE = ".autofunnel-secret"


@dataclass
class Runtime:
    settings: Settings
    db: Database
    project: Project
    clock: Clock = field(default_factory=SystemClock)
    rng: random.Random = field(default_factory=random.SystemRandom)

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None) -> Runtime:
        """Load the project (refusing one with errors) and open the migrated database."""
        project = load_project(Path(settings.project_dir))
        db = open_database(settings.resolved_database_url)
        settle_garbage_collector()
        return cls(settings=settings, db=db, project=project, clock=clock or SystemClock())

    @cached_property
    def secret_keys(self) -> tuple[str, ...]:
        """AUTOFUNNEL_SECRET_KEY (newest first), else the key kept in the project folder."""
        return self.settings.secret_key or (project_secret(Path(self.settings.project_dir)),)

    @cached_property
    def tokens(self) -> Tokens:
        return Tokens(self.secret_keys)

    @cached_property
    def renderer(self) -> Renderer:
        return Renderer(Path(self.settings.project_dir) / "templates")

    @cached_property
    def transport(self) -> Transport:
        return transport_from_url(self.settings.smtp_url, Path(self.settings.project_dir))

    @cached_property
    def broker(self) -> Broker:
        """Where delivery ids travel; a folder broker's folders are made once, here."""
        return broker_for(self.settings.resolved_broker_url)

    @cached_property
    def send_pace(self) -> Pace:
        """AUTOFUNNEL_SEND_RATE, shared with every other worker (through Redis or the database)."""
        return pace_for(self.settings.send_rate, self.settings.broker_url, self.db)

    @cached_property
    def dkim_key(self) -> bytes | None:
        """The DKIM private key, read once per process rather than once per email."""
        if not self.settings.dkim_key_file:
            return None
        try:
            return Path(self.settings.dkim_key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"AUTOFUNNEL_DKIM_KEY_FILE: cannot read {self.settings.dkim_key_file}: {exc.strerror}") from None

    @cached_property
    def sns_certificates(self) -> Any:
        """SNS signing certificates for the SES webhook, fetched once per process (or read from AUTOFUNNEL_SES_SIGNING_CERT_DIR)."""
        from autofunnel.services.hooks.ses import CertificateCache

        return CertificateCache(folder=self.settings.ses_signing_cert_dir)

    @cached_property
    def engagements(self) -> WriteBehind[Any]:
        """Opens and clicks fetched in this process, written in batches (AUTOFUNNEL_TRACKING_BATCH_SECONDS)."""
        from autofunnel.services.tracking import record_engagements

        def write(items: list[Any]) -> None:
            self.reload_project()  # a web process busy with opens alone still takes up edited files
            record_engagements(self, items)

        return WriteBehind(write, self.settings.tracking_batch_seconds)

    @cached_property
    def project_watch(self) -> ProjectWatch:
        return ProjectWatch(Path(self.settings.project_dir))

    def reload_project(self) -> bool:
        """Take up edited project files if they changed and validate (see services/reload.py); cheap to call often."""
        edited = self.project_watch.changed_project()
        if edited is None:
            return False
        self.project = edited
        self.__dict__.pop("renderer", None)
        return True

    def flow(self, slug: str) -> Flow:
        try:
            return self.project.flows[slug]
        except KeyError:
            raise NotFoundError(f"no funnel or sequence {slug!r} in this project", field="funnel", code="unknown_funnel") from None

    def close(self) -> None:
        """Write the opens and clicks still gathered, then let the database go."""
        buffered = self.__dict__.get("engagements")
        if buffered is not None:
            buffered.close()
        self.db.dispose()


def project_secret(project_dir: Path) -> str:
    """The key that signs links when AUTOFUNNEL_SECRET_KEY is not set: made once, kept in the project.

    One machine with nothing configured still gets stable, unguessable links;
    production sets AUTOFUNNEL_SECRET_KEY so every machine signs alike.
    """
    path = project_dir / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"AUTOFUNNEL_SECRET_KEY is not set and no key can be kept in {path} ({exc.strerror}); set AUTOFUNNEL_SECRET_KEY") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def settle_garbage_collector() -> None:
    """Keep Python's cyclic collector out of the hot path of a long-lived process.

    Everything loaded at start (SQLAlchemy's mappings, Jinja, the project) lives
    as long as the process; `gc.freeze` takes it out of every later collection,
    and a higher first threshold collects less often during a busy pass. Measured
    on a 1000-lead scheduler pass: ~50 ms of 215 ms was the collector walking
    start-up objects.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 10_000), gen1, gen2)
