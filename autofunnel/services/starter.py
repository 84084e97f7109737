"""`autofunnel init`: write the example project (yoga funnel, abandoned-cart sequence, templates).

The starter files ship inside the package; in a source checkout the email
templates are read from the repository's `templates/` folder instead, which is
where the wheel build takes them from.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from autofunnel.errors import ProjectExistsError

PROJECT_GITIGNORE = (
    "# What `autofunnel run` makes in the project folder: none of it belongs in version control.\n"
    "autofunnel.db\nautofunnel.db-*\noutbox/\n.autofunnel-secret\n.autofunnel-broker/\n"
)


def _starter() -> Traversable:
    return files("autofunnel") / "starter"


def _templates_root() -> Traversable:
    packaged = _starter() / "templates"
    if packaged.is_dir():
        return packaged
    source_tree = Path(str(files("autofunnel"))).parent / "templates"
    return source_tree


def starter_files() -> dict[str, bytes]:
    """Relative path → content for every file `init` writes."""
    found: dict[str, bytes] = {}

    def collect(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                collect(child, f"{prefix}{child.name}/")
            elif not child.name.startswith("."):
                found[f"{prefix}{child.name}"] = child.read_bytes()

    collect(_starter() / "funnels", "funnels/")
    collect(_templates_root(), "templates/")
    found["autofunnel.toml"] = (_starter() / "autofunnel.toml").read_bytes()
    found[".gitignore"] = PROJECT_GITIGNORE.encode()
    return found


def init_project(directory: Path) -> list[Path]:
    """Write the starter project into `directory`; refuse, writing nothing, if any file exists."""
    content = starter_files()
    clashes = sorted(path for path in content if (directory / path).exists())
    if clashes:
        raise ProjectExistsError(f"{directory / clashes[0]} already exists; nothing was written (init only writes into a new or empty project)")
    written = []
    for relative, data in sorted(content.items()):
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written
