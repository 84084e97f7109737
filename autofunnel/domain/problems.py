"""Problems found in a seller's files, each pointing at `file:line`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, order=True)
class Problem:
    path: Path
    line: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        label = "warning: " if self.severity == "warning" else ""
        return f"{self.path}:{self.line}: {label}{self.message}"


@dataclass
class Problems:
    """A collector: validation reports every problem, not just the first."""

    path: Path
    items: list[Problem] = field(default_factory=list)

    def error(self, line: int, message: str) -> None:
        self.items.append(Problem(self.path, line, message, "error"))

    def warning(self, line: int, message: str) -> None:
        self.items.append(Problem(self.path, line, message, "warning"))

    @property
    def has_errors(self) -> bool:
        return any(item.severity == "error" for item in self.items)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when one choice is close, else empty."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
