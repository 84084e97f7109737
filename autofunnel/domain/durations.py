"""Durations as sellers write them: `30m`, `12h`, `2d`, `1w`, or combined like `1d12h`."""

from __future__ import annotations

import re
from datetime import timedelta

from autofunnel.errors import DurationError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"^(?:\d+[smhdw])+$")


def parse_duration(text: object) -> timedelta:
    """Parse `30m`, `12h`, `2d`, `1w` or `1d12h`; zero is allowed (an immediate continue)."""
    if not isinstance(text, str) or not _WHOLE.match(text.strip()):
        raise DurationError(
            f"bad duration {text!r}: write a number and a unit (s, m, h, d, w), e.g. 30m, 12h, 2d, 1w"
        )
    seconds = sum(int(amount) * _UNITS[unit] for amount, unit in _PART.findall(text.strip()))
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling, so summaries read like the file the seller wrote."""
    remaining = int(delta.total_seconds())
    if remaining == 0:
        return "0m"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(parts)
