"""The shape of the code, held by a test: imports point one way (shared/DESIGN.md, "Layers").

Read from the source with `ast`, so a lazy import inside a function counts as much as
one at the top: the domain is plain Python over plain data, the store knows no use
case, the mail package renders and sends without the database, the web and the
command line are shells that never call each other, and nothing under autofunnel/
imports the Celery shell in workers/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "autofunnel.domain": ("flask", "celery", "kombu", "redis", "sqlalchemy", "autofunnel.store", "autofunnel.services",
                          "autofunnel.mail", "autofunnel.web", "autofunnel.cli", "autofunnel.commands", "workers"),
    "autofunnel.store": ("flask", "celery", "autofunnel.services", "autofunnel.web", "autofunnel.cli", "autofunnel.commands", "workers"),
    "autofunnel.mail": ("flask", "celery", "sqlalchemy", "autofunnel.store", "autofunnel.services", "autofunnel.web", "autofunnel.cli", "workers"),
    "autofunnel.services": ("flask", "celery", "autofunnel.web", "autofunnel.cli", "autofunnel.commands", "workers"),
    "autofunnel.web": ("celery", "autofunnel.cli", "autofunnel.commands", "workers"),
    "autofunnel.cli": ("autofunnel.web", "workers"),
    "autofunnel.commands": ("autofunnel.web", "workers"),
    "autofunnel": ("workers",),
}
"""A package (or module) → what nothing in it may import. The longest matching key applies."""


def _modules(folder: str) -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        relative = path.relative_to(REPO).with_suffix("")
        if "migrations" in relative.parts:
            continue  # migrations import no application code at all: test_migrations_are_frozen_in_time
        found[".".join(relative.parts).removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _rules_for(module: str) -> tuple[str, ...]:
    keys = [key for key in FORBIDDEN if module == key or module.startswith(key + ".")]
    return FORBIDDEN[max(keys, key=len)] if keys else ()


def _breaks(imported: str, forbidden: tuple[str, ...]) -> bool:
    return any(imported == name or imported.startswith(name + ".") for name in forbidden)


def test_every_import_points_down() -> None:
    broken = [
        f"{module} imports {imported}"
        for module, path in _modules("autofunnel").items()
        for imported in sorted(_imports(path))
        if _breaks(imported, _rules_for(module))
    ]
    assert broken == []


def test_the_rules_see_what_they_are_meant_to() -> None:
    modules = _modules("autofunnel")
    assert {"autofunnel.domain.engine", "autofunnel.store.models", "autofunnel.services.delivery", "autofunnel.web.api", "autofunnel.cli"} <= set(modules)
    assert "sqlalchemy" in _imports(modules["autofunnel.store.models"])
    assert _breaks("sqlalchemy.orm", _rules_for("autofunnel.domain.engine"))
    assert _breaks("workers.tasks", _rules_for("autofunnel.testing"))
    assert not _breaks("autofunnel.store.models", _rules_for("autofunnel.services.delivery"))


@pytest.mark.parametrize("command", ["run", "web", "worker", "scheduler"])
def test_the_process_commands_come_from_the_workers_shell(command: str) -> None:
    from autofunnel.cli import main

    loaded = main.get_command(None, command)  # type: ignore[arg-type]
    assert loaded is not None and loaded.callback is not None
    assert loaded.callback.__module__ == "workers.commands"
    assert command in main.list_commands(None)  # type: ignore[arg-type]


def test_celery_finds_the_app_in_the_workers_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import Celery
    from celery.app.utils import find_app

    from autofunnel.services.starter import init_project

    init_project(tmp_path / "shop")
    monkeypatch.setenv("AUTOFUNNEL_PROJECT_DIR", str(tmp_path / "shop"))
    app = find_app("workers")
    assert isinstance(app, Celery)
    assert "autofunnel.deliver" in app.tasks


def test_migrations_are_frozen_in_time() -> None:
    """A migration runs years after it was written, against the code of that day: if it imported
    today's code, editing that code would change what an old upgrade does. Only SQLAlchemy,
    Alembic and the standard library."""
    folder = REPO / "autofunnel" / "store" / "migrations" / "versions"  # env.py is the runner, not a migration
    migrations = sorted(folder.rglob("*.py"))
    assert len(migrations) > 5
    for path in migrations:
        imported = _imports(path)
        assert imported, path
        for name in imported:
            assert not _breaks(name, ("autofunnel", "workers")), f"{path.relative_to(REPO)} imports {name}"

