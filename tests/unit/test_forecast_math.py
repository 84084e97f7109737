"""The forecast's arithmetic: traffic scales leads, a stage change moves only what follows, goals are reached."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from autofunnel.domain.forecast import Change, CohortDay, Observed, Scenario, forecast, reach_goal

STAGES = ("lead", "tripwire", "core", "vip")


@st.composite
def observed(draw: st.DrawFn) -> Observed:
    days = []
    for _ in range(draw(st.integers(1, 20))):
        reached = [draw(st.integers(0, 200))]
        for _ in STAGES[1:]:
            reached.append(draw(st.integers(0, reached[-1])))
        days.append(CohortDay(tuple(reached), revenue=reached[1] * 19.0, customers=reached[1]))
    times = (None, *(draw(st.one_of(st.none(), st.floats(0, 20 * 86400))) for _ in STAGES[1:]))
    return Observed(STAGES, tuple(days), times, customer_stage=1)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_the_worked_example() -> None:
    days = (CohortDay((100, 52, 21, 13), revenue=52 * 19.0, customers=52),) * 10
    today = forecast(Observed(STAGES, days, (None, 0.0, 0.0, 0.0)), 30, [Scenario()])[0]
    assert [round(x) for x in today.expected.leads] == [3000, 1560, 630, 390]
    assert round(today.expected.revenue) == 1560 * 19
    assert today.range.low == today.range.high == today.expected  # every day alike: no spread


@settings(max_examples=60, deadline=None)
@given(observed(), st.floats(1, 365), st.floats(0.1, 10))
def test_traffic_multiplies_every_expected_figure(data: Observed, horizon: float, factor: float) -> None:
    today, more = forecast(data, horizon, [Scenario(), Scenario("more", traffic=factor)], samples=20)
    assert all(close(b, a * factor) for a, b in zip(today.expected.leads, more.expected.leads, strict=True))
    assert close(more.expected.customers, today.expected.customers * factor)
    assert close(more.expected.revenue, today.expected.revenue * factor)


@settings(max_examples=60, deadline=None)
@given(observed(), st.floats(1, 365), st.integers(1, len(STAGES) - 1), st.floats(-1, 1))
def test_a_stage_change_leaves_the_stages_before_it_alone(data: Observed, horizon: float, k: int, delta: float) -> None:
    today, changed = forecast(data, horizon, [Scenario(), Scenario("what if", changes={STAGES[k]: Change(delta=delta)})], samples=20)
    assert today.expected.leads[:k] == changed.expected.leads[:k]
    assert today.range.low.leads[:k] == changed.range.low.leads[:k]
    assert changed.rates[k - 1] == min(1.0, max(0.0, today.rates[k - 1] + delta))


@settings(max_examples=60, deadline=None)
@given(observed(), st.floats(1, 365), st.floats(1, 5000))
def test_the_goal_answer_reaches_the_goal(data: Observed, horizon: float, goal: float) -> None:
    answer = reach_goal(data, horizon, goal)
    if answer.best is None:
        return
    option = answer.best
    result = forecast(data, horizon, [Scenario("goal", changes={option.stage: Change(value=option.needed)})], samples=1)[0]
    assert result.expected.customers >= goal * (1 - 1e-9)
    for other in answer.options:
        if other.needed is not None:
            assert option.needed - option.current <= other.needed - other.current + 1e-12


def test_a_goal_no_single_stage_can_reach_says_so() -> None:
    days = (CohortDay((10, 5, 1, 0), revenue=95.0, customers=5),)
    answer = reach_goal(Observed(STAGES, days, (None, 0.0, 0.0, 0.0)), 10, 1000)
    assert answer.best is None and all(option.needed is None for option in answer.options)


def test_the_bootstrap_is_seeded() -> None:
    days = tuple(CohortDay((n, n // 2, n // 5, 0), revenue=n * 5.0, customers=n // 2) for n in (10, 40, 7, 90, 33))
    data = Observed(STAGES, days, (None, 3600.0, 86400.0, None))
    first = forecast(data, 90, [Scenario()], seed=7)[0]
    assert forecast(data, 90, [Scenario()], seed=7)[0] == first
    assert first.range.low.leads[0] < first.expected.leads[0] < first.range.high.leads[0]
