"""What-if forecasts of a funnel: expected leads per stage, customers and revenue over a horizon.

The model is the funnel literature's chain of conversions, fed by what the
report observed: leads enter at the observed daily rate (times the traffic
factor), each stage keeps the observed share of the stage before it, and a
lead that enters on day t reaches stage k on day t + T_k, where T_k adds up
the median times to reach the stages up to k; only arrivals within the
horizon count. Customers are the leads that reach the customer stage (the
first stage entered by a purchase); revenue is customers times the observed
net revenue per customer. Every figure is linear in the traffic, and a change
to stage k's conversion moves only stage k and what follows it.

The range comes from a seeded bootstrap over the observed cohort days: days
are drawn with replacement, the rates measured again on each draw, and the
5th and 95th percentiles of each figure across draws are its range. It shows
how much the figures depend on which days happened to be observed; it does
not cover a change in the market, or cohorts too young to have converted yet.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SAMPLES = 200
LOW, HIGH = 0.05, 0.95


@dataclass(frozen=True)
class CohortDay:
    """One observed cohort day: the leads that entered, how many reached each stage, and their net revenue."""

    reached: tuple[int, ...]
    revenue: float = 0.0
    customers: int = 0


@dataclass(frozen=True)
class Observed:
    stages: tuple[str, ...]
    days: tuple[CohortDay, ...]
    median_times_s: tuple[float | None, ...]
    """Per stage, the median time to reach it from the stage before (None for the first, or unknown)."""
    customer_stage: int = 1


@dataclass(frozen=True)
class Change:
    """A stage's conversion from the previous stage: `delta` added, or set to `value`."""

    delta: float = 0.0
    value: float | None = None

    def apply(self, rate: float) -> float:
        return min(1.0, max(0.0, self.value if self.value is not None else rate + self.delta))


@dataclass(frozen=True)
class Scenario:
    name: str = "today"
    traffic: float = 1.0
    changes: Mapping[str, Change] = field(default_factory=dict)


@dataclass(frozen=True)
class Rates:
    daily_leads: float
    conversions: tuple[float, ...]
    """Per stage after the first, the share of the stage before that reached it."""
    revenue_per_customer: float


@dataclass(frozen=True)
class Expectation:
    leads: tuple[float, ...]
    customers: float
    revenue: float


@dataclass(frozen=True)
class Range:
    low: Expectation
    high: Expectation


@dataclass(frozen=True)
class ScenarioForecast:
    scenario: Scenario
    rates: tuple[float, ...]
    expected: Expectation
    range: Range


@dataclass(frozen=True)
class GoalOption:
    stage: str
    current: float
    needed: float | None
    """The conversion into `stage` that reaches the goal alone; None when no rate up to 100 % does."""


@dataclass(frozen=True)
class GoalAnswer:
    customers: float
    expected: float
    reached_already: bool
    best: GoalOption | None
    options: tuple[GoalOption, ...]


def measure(days: Sequence[CohortDay], stage_count: int) -> Rates:
    """The rates a run of cohort days shows; a stage nobody reached the one before of converts at 0."""
    totals = [sum(day.reached[k] for day in days) for k in range(stage_count)]
    conversions = tuple(totals[k] / totals[k - 1] if totals[k - 1] else 0.0 for k in range(1, stage_count))
    customers = sum(day.customers for day in days)
    revenue = sum(day.revenue for day in days)
    return Rates(totals[0] / len(days) if days else 0.0, conversions, revenue / customers if customers else 0.0)


def expect(rates: Rates, median_times_s: Sequence[float | None], horizon_days: float, scenario: Scenario,
           stages: Sequence[str], customer_stage: int) -> Expectation:
    """Expected leads reaching each stage within the horizon, customers and revenue, for one scenario."""
    entering = rates.daily_leads * scenario.traffic * horizon_days
    leads = [entering]
    share = 1.0
    elapsed_days = 0.0
    for k in range(1, len(stages)):
        change = scenario.changes.get(stages[k])
        rate = change.apply(rates.conversions[k - 1]) if change else rates.conversions[k - 1]
        share *= rate
        elapsed_days += (median_times_s[k] or 0.0) / 86400
        in_time = max(0.0, 1.0 - elapsed_days / horizon_days) if horizon_days > 0 else 0.0
        leads.append(entering * share * in_time)
    customers = leads[customer_stage] if customer_stage < len(leads) else 0.0
    return Expectation(tuple(leads), customers, customers * rates.revenue_per_customer)


def scenario_rates(rates: Rates, stages: Sequence[str], scenario: Scenario) -> tuple[float, ...]:
    return tuple(
        scenario.changes[stages[k]].apply(rate) if stages[k] in scenario.changes else rate
        for k, rate in enumerate(rates.conversions, start=1)
    )


def forecast(observed: Observed, horizon_days: float, scenarios: Sequence[Scenario], *, samples: int = SAMPLES,
             seed: int = 0) -> list[ScenarioForecast]:
    """Each scenario's expected figures from the observed rates, and their bootstrap range."""
    count = len(observed.stages)
    base = measure(observed.days, count)
    rng = random.Random(seed)
    draws = [measure(rng.choices(observed.days, k=len(observed.days)), count) for _ in range(samples)] if observed.days else []
    results = []
    for scenario in scenarios:
        point = expect(base, observed.median_times_s, horizon_days, scenario, observed.stages, observed.customer_stage)
        sampled = [expect(d, observed.median_times_s, horizon_days, scenario, observed.stages, observed.customer_stage) for d in draws] or [point]
        results.append(ScenarioForecast(scenario, scenario_rates(base, observed.stages, scenario), point, Range(_quantile(sampled, LOW), _quantile(sampled, HIGH))))
    return results


def _quantile(sampled: Sequence[Expectation], q: float) -> Expectation:
    def at(values: list[float]) -> float:
        values = sorted(values)
        position = q * (len(values) - 1)
        lower = int(position)
        upper = min(lower + 1, len(values) - 1)
        return values[lower] + (values[upper] - values[lower]) * (position - lower)

    stages = len(sampled[0].leads)
    return Expectation(
        tuple(at([s.leads[k] for s in sampled]) for k in range(stages)),
        at([s.customers for s in sampled]),
        at([s.revenue for s in sampled]),
    )


def reach_goal(observed: Observed, horizon_days: float, customers: float, base: Scenario | None = None) -> GoalAnswer:
    """Which single stage's conversion, raised alone, brings expected customers to the goal, and to what.

    Customers are a product of the conversions up to the customer stage, so the
    conversion into stage k needed is today's times goal / expected, or, where
    today's is 0, the goal over what every other factor gives. Stages after
    the customer stage cannot help; a needed rate above 100 % means that stage
    alone cannot do it.
    """
    base = base or Scenario()
    rates = measure(observed.days, len(observed.stages))
    now = expect(rates, observed.median_times_s, horizon_days, base, observed.stages, observed.customer_stage)
    current = scenario_rates(rates, observed.stages, base)
    options = []
    for k in range(1, len(observed.stages)):
        name = observed.stages[k]
        needed: float | None = None
        if k <= observed.customer_stage:
            without = Scenario(base.name, base.traffic, {**base.changes, name: Change(value=1.0)})
            at_full = expect(rates, observed.median_times_s, horizon_days, without, observed.stages, observed.customer_stage).customers
            if at_full > 0 and customers <= at_full:
                needed = max(current[k - 1], customers / at_full)
        options.append(GoalOption(name, current[k - 1], needed))
    reachable = [option for option in options if option.needed is not None]
    best = min(reachable, key=lambda option: (option.needed or 0.0) - option.current) if reachable else None
    return GoalAnswer(customers, now.customers, now.customers >= customers, best, tuple(options))
