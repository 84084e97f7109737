"""What `docker build .` would send: Docker's .dockerignore rules, applied to a checkout.

No Docker engine runs here, so the tests prove the image's contents by these rules:
tests/test_first_day.py checks nothing private gets in, tests/test_image.py builds
the wheel from exactly these files, as the Dockerfile's `pip install` does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path


def docker_ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rules (moby/patternmatcher): `*` and `?` stay within one path
    element, `**` spans any number; a pattern matching a folder covers what is in it; the last
    pattern that matches decides, and `!` re-includes."""
    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out, i = out + ".*", i + 2
                if pattern.startswith("/", i):
                    out, i = out + "(?:/)?", i + 1
                    out = out[: -len(".*(?:/)?")] + "(?:.*/)?"
                continue
            char = pattern[i]
            out += "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char) if char not in "[]" else char
            i += 1
        return re.compile(f"^{out}$")

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        compiled = regex(pattern.strip("/"))
        if any(compiled.match(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def dockerignore_patterns(checkout: Path) -> list[str]:
    return [line.strip() for line in (checkout / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]


def copy_build_context(checkout: Path, target: Path) -> list[str]:
    """Copy the files of `checkout` that git tracks and .dockerignore lets through into `target`."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=checkout, capture_output=True, text=True, check=True).stdout.split("\0")
    patterns = dockerignore_patterns(checkout)
    sent = [name for name in tracked if name and not docker_ignored(patterns, name)]
    for name in sent:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkout / name, target / name)
    return sent
