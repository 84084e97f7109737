"""Forecasts: the funnel report's observed cohort days turned into what-if figures (domain/forecast.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from autofunnel.domain.forecast import Change, CohortDay, Observed, Scenario, forecast, reach_goal
from autofunnel.domain.model import Funnel
from autofunnel.errors import InvalidInputError
from autofunnel.services.report import ReportQuery, Shown, funnel_report
from autofunnel.services.runtime import Runtime

OBSERVED_DAYS = 90
_CHANGE = re.compile(r"^\s*([a-z0-9-]+)\s*=\s*([+-]?)\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")
_TRAFFIC = re.compile(r"^\s*[×xX*]?\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class ForecastQuery:
    funnel: str
    horizon_days: int = 90
    traffic: float = 1.0
    changes: tuple[tuple[str, Change], ...] = ()
    goal_customers: float | None = None
    observed_days: int = OBSERVED_DAYS
    seed: int = 0


def parse_change(text: str) -> tuple[str, Change]:
    """`tripwire=+0.05` (add), `tripwire=-5%` (subtract points), `tripwire=0.3` (set)."""
    match = _CHANGE.match(text)
    if not match:
        raise InvalidInputError(f"{text!r}: write STAGE=+0.05, STAGE=-2% or STAGE=0.3", field="--stage")
    stage, sign, number, percent = match.groups()
    value = float(number) / (100 if percent else 1)
    if sign:
        return stage, Change(delta=value if sign == "+" else -value)
    if value > 1:
        raise InvalidInputError(f"{text!r}: a conversion is a fraction from 0 to 1 (or a percentage with %)", field="--stage")
    return stage, Change(value=value)


def parse_traffic(text: str) -> float:
    """`×2`, `x2` or `2`: the factor the daily number of new leads is multiplied by."""
    match = _TRAFFIC.match(text)
    if not match or float(match.group(1)) <= 0:
        raise InvalidInputError(f"{text!r}: write a factor such as ×2, x1.5 or 0.5", field="--traffic")
    return float(match.group(1))


def parse_goal(text: str) -> float:
    name, _, number = text.partition("=")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if name.strip() != "customers" or value <= 0:
        raise InvalidInputError(f"{text!r}: write customers=N", field="--goal")
    return value


def customer_stage(funnel: Funnel) -> int:
    """The first stage entered by a purchase (else the second stage): its leads are the customers."""
    for index, stage in enumerate(funnel.stages):
        if index and stage.enter_on is not None and stage.enter_on.event == "purchase":
            return index
    return min(1, len(funnel.stages) - 1)


def observe(rt: Runtime, funnel: Funnel, today: date, days: int) -> tuple[Observed, date | None]:
    """The observed cohort days of the last `days` (from the first with a lead), from the report service."""
    start = today - timedelta(days=days - 1)
    # Per-day counts and the whole period's times are what a forecast uses; per-day times it does not.
    report = funnel_report(rt, ReportQuery(funnel.slug, start, today, mode="cohort", interval="day"), shown=Shown(period_times=False, unmatched_refunds=False))
    names = tuple(stage.name for stage in funnel.stages)
    by_day: dict[str, CohortDay] = {}
    for period in report.get("periods", []):
        reached = {row["stage"]: int(row["reached"]) for row in period["stages"]}
        revenue = period.get("revenue") or {}
        by_day[period["period"]] = CohortDay(tuple(reached.get(name, 0) for name in names), float(revenue.get("total") or 0.0), int(revenue.get("customers") or 0))
    active = sorted(day for day, cohort in by_day.items() if cohort.reached[0])
    first = date.fromisoformat(active[0]) if active else None
    cohorts = []
    if first is not None:
        empty = CohortDay(tuple(0 for _ in names))
        cohorts = [by_day.get((first + timedelta(days=i)).isoformat(), empty) for i in range((today - first).days + 1)]
    times = {row["stage"]: row["time_to_reach"]["median_s"] for row in report["stages"]}
    return Observed(names, tuple(cohorts), tuple(times.get(name) for name in names), customer_stage(funnel)), first


def funnel_forecast(rt: Runtime, query: ForecastQuery) -> dict[str, Any]:
    """Today's expected figures and the what-if ones side by side, with ranges, and the goal's answer."""
    flow = rt.flow(query.funnel)
    if not isinstance(flow, Funnel):
        raise InvalidInputError(f"{query.funnel!r} is a sequence; forecasts are of funnels", field="funnel", code="not_a_funnel")
    names = [stage.name for stage in flow.stages]
    for stage, _ in query.changes:
        if stage not in names[1:]:
            raise InvalidInputError(f"--stage {stage!r}: not a stage after the first of {flow.slug} ({', '.join(names[1:])})", field="--stage")
    today = rt.clock.now().date()
    observed, first = observe(rt, flow, today, query.observed_days)
    scenarios = [Scenario()]
    if query.traffic != 1.0 or query.changes:
        scenarios.append(Scenario("what if", query.traffic, dict(query.changes)))
    results = forecast(observed, query.horizon_days, scenarios, seed=query.seed)
    body: dict[str, Any] = {
        "funnel": flow.slug, "days": query.horizon_days,
        "observed": {"from": first.isoformat() if first else None, "to": today.isoformat(), "days": len(observed.days),
                     "leads": sum(day.reached[0] for day in observed.days)},
        "customer_stage": names[observed.customer_stage],
        "scenarios": [_scenario_json(result, names) for result in results],
    }
    if query.goal_customers is not None:
        answer = reach_goal(observed, query.horizon_days, query.goal_customers, scenarios[-1])
        body["goal"] = {
            "customers": answer.customers, "expected": answer.expected, "reached_already": answer.reached_already,
            "best": None if answer.best is None else {"stage": answer.best.stage, "from": answer.best.current, "to": answer.best.needed},
            "options": [{"stage": o.stage, "from": o.current, "to": o.needed} for o in answer.options],
        }
    return body


def _scenario_json(result: Any, names: list[str]) -> dict[str, Any]:
    s = result.scenario
    return {
        "name": s.name, "traffic": s.traffic,
        "changes": {stage: ({"to": change.value} if change.value is not None else {"by": change.delta}) for stage, change in s.changes.items()},
        "stages": [
            {"stage": name, "conversion_from_previous": None if k == 0 else result.rates[k - 1],
             "leads": result.expected.leads[k], "low": result.range.low.leads[k], "high": result.range.high.leads[k]}
            for k, name in enumerate(names)
        ],
        "customers": {"expected": result.expected.customers, "low": result.range.low.customers, "high": result.range.high.customers},
        "revenue": {"expected": result.expected.revenue, "low": result.range.low.revenue, "high": result.range.high.revenue},
    }
