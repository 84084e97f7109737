"""The synthetic leads' behaviour, as numbers: what `autofunnel simulate` and `demo` make up.

A simulation's leads are run through the real services (`services/simulate.py`);
only their behaviour is invented, from `Rates` and a seeded random source. Here
are the rates and how given, observed and default ones combine, the order values
and channels leads are given, and a run's figures: emails sent and where the
leads stand at the end of each day — plain values, no database.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

PRICES = (19.0, 199.0, 990.0, 1990.0)
"""Order values of the purchases that enter the 2nd, 3rd… stage, when the event names none."""
CHANNELS = (("instagram", 0.35), ("google", 0.25), ("newsletter-swap", 0.15), ("facebook", 0.15), (None, 0.10))
"""Where synthetic leads come from, with their shares."""


@dataclass
class Rates:
    """The behaviour of synthetic leads; the defaults are stated in the README."""

    open: float = 0.45
    click: float = 0.25
    unsubscribe: float = 0.005
    confirm: float = 0.85
    stage: float = 0.2
    stages: dict[str, float] = field(default_factory=dict)
    buy_within: float = 5.0
    source: str = "default"

    def conversion(self, stage: str) -> float:
        return self.stages.get(stage, self.stage)


def merged_rates(observed: Rates | None, given: Mapping[str, float]) -> Rates:
    """Given rates win over observed ones, observed over the defaults."""
    rates = observed or Rates()
    if given:
        rates.source = "given" if observed is None else "observed+given"
    for name, value in given.items():
        if name in ("open", "click", "unsubscribe", "confirm"):
            setattr(rates, name, value)
        else:
            rates.stages[name] = value
    return rates


@dataclass
class DayFigures:
    day: int
    date: str
    sent: dict[str, int]
    stages: dict[str, int]


@dataclass
class SimulationResult:
    funnel: str
    seed: int
    leads: int
    days: int
    start: str
    rates: dict[str, Any]
    per_day: list[DayFigures]
    report: dict[str, Any]
    emails: int
    seconds: float

    @property
    def lead_days_per_s(self) -> float:
        return self.leads * self.days / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self, *, timing: bool = True) -> dict[str, Any]:
        data = {
            "funnel": self.funnel, "seed": self.seed, "leads": self.leads, "days": self.days, "start": self.start,
            "rates": self.rates, "days_run": [asdict(day) for day in self.per_day], "emails": self.emails, "report": self.report,
        }
        if timing:
            data["seconds"] = round(self.seconds, 3)
            data["lead_days_per_s"] = round(self.lead_days_per_s, 1)
        return data


def day_figures(
    sent: Iterable[tuple[datetime, str]], entries: Iterable[tuple[int, int, datetime]], names: Sequence[str], begin: datetime, days: int,
) -> list[DayFigures]:
    """Emails `sent` (moment, template) each day by template, and how many leads sit in each stage
    (`names`, by position) at each day's end, from the stage `entries` (lead, position, moment)."""
    by_day: dict[int, Counter[str]] = defaultdict(Counter)
    for moment, template in sent:
        by_day[(moment - begin).days][template] += 1
    moves = sorted((at, lead, position) for lead, position, at in entries)
    where: dict[int, int] = {}
    result: list[DayFigures] = []
    cursor = 0
    for day in range(days):
        day_end = begin + timedelta(days=day + 1)
        while cursor < len(moves) and moves[cursor][0] < day_end:
            _, lead, position = moves[cursor]
            where[lead] = max(where.get(lead, 0), position)
            cursor += 1
        occupancy = Counter(names[position] for position in where.values())
        result.append(DayFigures(day + 1, (begin + timedelta(days=day)).date().isoformat(),
                                 dict(sorted(by_day[day].items())), {name: occupancy.get(name, 0) for name in names}))
    return result
