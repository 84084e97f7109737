"""Live reload: running processes pick up edited project files once they validate.

A process checks the files' names, sizes and modification times (a few
`stat` calls, no reading) at most once per `every` seconds: the scheduler
before each pass, a worker before each batch, the web app before a request.
When they changed, the project is validated whole; a clean one replaces the
running project (and the renderer, whose compiled templates are cached), a
broken one is logged with its first errors and the last good version keeps
running until the files are fixed. What an edit does to the waiting leads is
what `autofunnel validate --plan` shows.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from autofunnel.domain.model import Project
from autofunnel.services.project import ValidationResult, validate_project

log = logging.getLogger("autofunnel.reload")

WATCHED = ("funnels", "templates")
Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(root: Path) -> Fingerprint:
    """Every watched file's path, size and modification time: what changes when a file is edited, added or removed."""
    seen: list[tuple[str, int, int]] = []
    for name in WATCHED:
        for folder, _, files in os.walk(root / name):
            for file in files:
                try:
                    info = os.stat(os.path.join(folder, file))
                except FileNotFoundError:
                    continue
                seen.append((os.path.join(folder, file), info.st_size, info.st_mtime_ns))
    return tuple(sorted(seen))


_validated: dict[Path, tuple[Fingerprint, ValidationResult]] = {}


def validation_of(root: Path) -> ValidationResult:
    """`validate_project(root)`, done again only when a watched file changed.

    The admin's Files page shows it on every visit, and validating renders every
    template (a third of a second for the starter); a few `stat` calls say whether
    the last answer still holds. The result is shared: read it, never change it.
    """
    current = fingerprint(root)
    known = _validated.get(root)
    if known is not None and known[0] == current:
        return known[1]
    result = validate_project(root)
    _validated[root] = (current, result)
    return result


@dataclass
class ProjectWatch:
    root: Path
    every: float = 1.0
    seen: Fingerprint = ()
    refused: Fingerprint | None = None
    last_check: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.seen = fingerprint(self.root)
        self.last_check = time.monotonic()

    def changed_project(self) -> Project | None:
        """The edited project when the files changed and validate; None otherwise (logging a refused edit once)."""
        now = time.monotonic()
        if now - self.last_check < self.every:
            return None
        self.last_check = now
        current = fingerprint(self.root)
        if current == self.seen or current == self.refused:
            return None
        result = validate_project(self.root)
        if not result.ok:
            self.refused = current
            shown = "; ".join(str(problem) for problem in result.errors[:5])
            log.error("edited project files refused, still running the last good version: %d error(s): %s", len(result.errors), shown)
            return None
        self.seen, self.refused = current, None
        log.info("project files reloaded: %d flow(s)", len(result.flows))
        return Project(root=self.root, flows=dict(result.flows))
