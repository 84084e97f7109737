"""The report's shape: the figures its queries gather, and SPEC.md's rows made of them.

The database counts (`store/report_queries.py`) and `domain.report` does the
arithmetic; here the aggregates of each slice of a report (the whole of it, a
group, a period) are kept by key and turned into the JSON a seller reads —
stages, revenue per currency, steps, holdout, variants, spend and attribution —
from plain values, so the shape is tested and changed without a database.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from autofunnel.domain import report as math
from autofunnel.domain.report import ATTRIBUTION_WINDOW
from autofunnel.domain.model import Funnel, Send

Key = tuple[Any, ...]
"""A slice of the report: `()` for the whole of it, `(group,)`, or `(period,)`."""
Times = dict[str, tuple[float | None, float | None]]
"""Median and p90 in seconds, per stage (and `LENGTH`)."""
LENGTH: Final = "*funnel length*"
"""The bucket that carries funnel-length durations through the percentile query; not a valid stage slug."""
PERCENTILES: Final = (0.5, 0.9)
STEP_FIGURES: Final = ("sent", "opened", "clicked", "unsubscribed", "purchases_7d", "gross_7d", "refunded_7d")
REVENUE_FIGURES: Final = ("gross", "orders", "customers", "refunded", "refunds", "refunded_orders")
SplitSteps = dict[str, tuple[int, str, list[str]]]
"""A funnel's A/B `send` steps: step id → (stage position, stage, its variants' templates)."""


@dataclass(frozen=True)
class ReportQuery:
    """What the seller asked for, checked: the funnel, the period (inclusive dates) and the slices."""

    funnel: str
    start: date
    end: date
    mode: str = "cohort"
    by: str | None = None
    interval: str | None = None
    attribution: str | None = None
    window: timedelta = ATTRIBUTION_WINDOW
    window_text: str = "7d"


@dataclass
class Figures:
    """The aggregates of one slicing of the report (whole, by group, or by period), by key."""

    counts: dict[Key, dict[str, list[int]]] = field(default_factory=lambda: defaultdict(dict))
    times: dict[Key, Times] = field(default_factory=lambda: defaultdict(dict))
    revenue: dict[Key, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(dict))
    """Per currency: `REVENUE_FIGURES`."""
    steps: dict[Key, dict[tuple[str, str], list[float]]] = field(default_factory=lambda: defaultdict(dict))
    """Per stage and step: `STEP_FIGURES`."""

    def slices(self) -> list[Key]:
        found = set(self.counts) | set(self.revenue) | set(self.steps)
        return sorted(found, key=lambda key: tuple((value is None, str(value)) for value in key))

    def rolled_up(self) -> Figures:
        """The same counts and sums over all keys; valid when the keys split the leads (a partition)."""
        total = Figures()
        _add_up(self.counts, total.counts)
        _add_up(self.revenue, total.revenue)
        _add_up(self.steps, total.steps)
        return total


def _add_up(source: Mapping[Key, Mapping[Any, list[Any]]], target: dict[Key, Any]) -> None:
    """Sum every key's figures, name by name, into the whole report's key `()`."""
    for per_key in source.values():
        for name, values in per_key.items():
            into = target[()].setdefault(name, [0] * len(values))
            for index, value in enumerate(values):
                into[index] += value


def tally_into(figures: Figures, key: Key, figure: str, stage: str, step: str, detail: str, n: int, amount: float) -> None:
    """Add one tally row to the figures of one slice, in the shape the fact-counting queries give."""
    if figure in ("reached", "skipped"):
        figures.counts[key].setdefault(stage, [0, 0])[figure == "skipped"] += n
    elif figure in STEP_FIGURES or figure == "refunds_7d":
        into = figures.steps[key].setdefault((stage, step), [0] * len(STEP_FIGURES))
        if figure == "refunds_7d":
            into[6] += amount
        else:
            into[STEP_FIGURES.index(figure)] += n
        if figure == "purchases_7d":
            into[5] += amount
    elif figure in ("revenue", "customers", "refunded", "refunded_orders"):
        into = figures.revenue[key].setdefault(detail, [0.0] + [0] * (len(REVENUE_FIGURES) - 1))
        if figure == "revenue":
            into[0] += amount
            into[1] += n
        elif figure == "customers":
            into[2] += n
        elif figure == "refunded":
            into[3] += amount
            into[4] += n
        else:
            into[5] += n


def period_end(period: str, unit: str) -> date:
    """The day after the last day of a period `period_of_day` names."""
    first = date.fromisoformat(period)
    if unit == "week":
        return first + timedelta(days=7)
    if unit == "month":
        return (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return first + timedelta(days=1)


@functools.lru_cache(maxsize=4096)
def period_of_day(day: date, unit: str) -> str:
    """The first day of the period (`interval`) a day falls in, as the SQL `period_start` gives it (weeks start on Monday)."""
    if unit == "week":
        day -= timedelta(days=day.weekday())
    elif unit == "month":
        day = day.replace(day=1)
    return day.isoformat()


def send_steps(funnel: Funnel) -> list[tuple[str, str]]:
    """The funnel's `send` steps as (stage, step), in the funnel's order: the report's step rows."""
    return [(stage.name, step.id) for stage in funnel.stages for step in stage.steps if isinstance(step.action, Send)]


def split_steps(funnel: Funnel) -> SplitSteps:
    """The `send` steps with variants whose stage has a next one to convert to."""
    return {
        step.id: (position, stage.name, [v.template for v in step.action.variants])
        for position, stage in enumerate(funnel.stages) for step in stage.steps
        if isinstance(step.action, Send) and step.action.variants and position + 1 < len(funnel.stages)
    }


# Rows of the report -----------------------------------------------------------------------


def section(figures: Figures, key: Key, stages: Sequence[str], order: Sequence[tuple[str, str]], unmatched: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One slice's stages, funnel length, revenue and steps; `unmatched` refunds are the whole report's."""
    counts = figures.counts.get(key, {})
    times = figures.times.get(key, {})
    rows = math.funnel_stages(
        stages,
        {name: values[0] for name, values in counts.items()},
        {name: values[1] for name, values in counts.items()},
        times,
    )
    length = times.get(LENGTH, (None, None))
    revenue = figures.revenue.get(key, {})
    given_back: dict[str | None, float] = defaultdict(float)
    for row in unmatched or []:
        given_back[row["currency"]] += row["amount"]
    by_currency = [
        {
            **math.revenue_summary(
                gross, int(orders), currency or None, refunded=refunded, refunds=int(refunds), refunded_orders=int(orders_refunded),
                unmatched=given_back[currency or None],
            ),
            "customers": int(customers),
        }
        for currency, (gross, orders, customers, refunded, refunds, orders_refunded) in sorted(revenue.items(), key=lambda item: (-item[1][0], item[0] or ""))
    ]
    return {
        "stages": rows,
        "overall_conversion": math.overall_conversion(rows),
        "funnel_length": {"median_s": math.seconds(length[0]), "p90_s": math.seconds(length[1])},
        "revenue": by_currency[0] if by_currency else math.revenue_summary(0.0, 0, None) | {"customers": 0},
        "revenue_by_currency": by_currency,
        "steps": step_rows(figures.steps.get(key, {}), order),
    }


def step_rows(steps: Mapping[tuple[str, str], list[float]], order: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per `send` step of the funnel, in the funnel's `order`, then any step no longer in it."""
    listed = [*order, *sorted(set(steps) - set(order))]
    rows = []
    for stage, step in listed:
        sent, opened, clicked, unsubscribed, purchases, gross, refunded = steps.get((stage, step), [0] * len(STEP_FIGURES))
        rows.append({
            "stage": stage, "step": step, "sent": int(sent), "opened": int(opened), "clicked": int(clicked),
            "unsubscribed": int(unsubscribed), "purchases_7d": int(purchases), "revenue_7d": math.money(math.net_revenue(gross, refunded)),
            "open_rate": math.fraction(opened, sent), "click_rate": math.fraction(clicked, sent),
        })
    return rows


def unmatched_refund(lead_id: int, order_id: Any, at: datetime, amount: float | None, currency: str | None) -> dict[str, Any]:
    """A refund of an order never recorded, as the report lists it."""
    return {
        "lead_id": lead_id, "order_id": None if order_id is None else str(order_id), "at": at.astimezone(UTC).isoformat(),
        "amount": math.money(float(amount or 0)), "currency": currency or None,
    }


def holdout(counts: Mapping[str, Mapping[str, int]], stages: Sequence[str]) -> dict[str, Any] | None:
    """Treated against held-out leads, stage by stage, from each group's reach per stage."""
    if not counts:
        return None
    treated, held = counts.get("treated", {}), counts.get("held_out", {})
    first = stages[0]
    return {
        "treated": treated.get(first, 0),
        "held_out": held.get(first, 0),
        "interval": "newcombe",
        "stages": [
            {"stage": stage, **math.lift_json(math.newcombe_lift(treated.get(stage, 0), treated.get(first, 0), held.get(stage, 0), held.get(first, 0)))}
            for stage in stages[1:]
        ],
    }


def variant_rows(steps: SplitSteps, found: Mapping[tuple[str, str], tuple[int, int]]) -> list[dict[str, Any]]:
    """Each variant's leads and conversions (`found`, by step and template), against the step's first variant."""
    rows = []
    for step_id, (_, stage, templates) in steps.items():
        base_leads, base_converted = found.get((step_id, templates[0]), (0, 0))
        for index, template in enumerate(templates):
            leads, converted = found.get((step_id, template), (0, 0))
            lift = math.newcombe_lift(converted, leads, base_converted, base_leads) if index else None
            rows.append({
                "stage": stage, "step": step_id, "variant": template, "leads": leads, "converted": converted,
                "conversion": math.fraction(converted, leads),
                "lift_vs_first": None if lift is None else lift.lift,
                "ci95": None if lift is None or lift.low is None else [lift.low, lift.high],
            })
    return rows


def net_by_currency(revenue: Mapping[str, list[float]]) -> dict[str, float]:
    """A slice's net revenue per currency."""
    return {cur: math.net_revenue(values[0], values[3]) for cur, values in revenue.items()}


def spend_rows(spent: Mapping[str, float], figures: Figures, key: Key, first_stage: str) -> list[dict[str, Any]] | None:
    """Cost figures per currency of spend (`spent`) for one slice: the whole report, or a channel's group."""
    if not spent:
        return None
    leads = figures.counts.get(key, {}).get(first_stage, [0, 0])[0]
    revenue = figures.revenue.get(key, {})
    customers = sum(int(values[2]) for values in revenue.values())
    net = net_by_currency(revenue)
    return [
        {"currency": currency, **math.spend_figures(amount, leads, customers, net.get(currency, 0.0))}
        for currency, amount in sorted(spent.items())
    ]


def attribution_rows(shares: dict[tuple[str | None, str], float], totals: Mapping[str, float], name: str) -> list[dict[str, Any]]:
    """Revenue shared out to channels or emails (`name`), per currency; what no touch earned, up
    to each currency's net revenue in `totals`, is shown against `null`."""
    given: dict[str, float] = defaultdict(float)
    for (_, cur), value in shares.items():
        given[cur] += value
    for cur, total in totals.items():
        shares[(None, cur)] = shares.get((None, cur), 0.0) + total - given[cur]
    rows = []
    for (label, cur), value in sorted(shares.items(), key=lambda item: (item[0][1], item[0][0] is None, -item[1])):
        entry: dict[str, Any] = {name: label}
        if name == "step":
            stage, _, step = (label or "/").partition("/")
            entry = {"stage": stage or None, "step": step or None}
        rows.append({**entry, "currency": cur or None, "revenue": math.money(value)})
    return rows
