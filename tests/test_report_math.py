"""The report's pure arithmetic: percentiles, lift intervals, attribution weights."""

from __future__ import annotations

import bisect
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autofunnel.domain.report import (
    PRODUCT_LENGTH,
    TIME_BUCKETS,
    bucket_walks,
    funnel_stages,
    lead_split_values,
    newcombe_lift,
    percentile_from_ranks,
    percentile_ranks,
    products_bought,
    rank_weight,
    tallied_split,
    wilson_interval,
    with_products,
)


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=60), st.sampled_from([0.5, 0.9]))
def test_percentiles_from_two_ranks_equal_the_inclusive_quantile(values: list[int], p: float) -> None:
    ordered = sorted(values)
    wanted = percentile_ranks(len(ordered), [p])
    assert len(wanted) <= 2
    picked = {rank: float(ordered[rank - 1]) for rank in wanted}
    expected = ordered[0] if len(ordered) == 1 else statistics.quantiles(ordered, n=10 if p == 0.9 else 2, method="inclusive")[-1 if p == 0.9 else 0]
    assert percentile_from_ranks(picked, len(ordered), p) == pytest.approx(expected)


@given(st.lists(st.floats(-100, 4e7), min_size=1, max_size=80), st.sampled_from([0.5, 0.9]), st.booleans())
def test_each_wanted_rank_is_walked_to_inside_the_bucket_that_holds_its_time(values: list[float], p: float, unbucketed: bool) -> None:
    ordered = sorted(values)
    counts: dict[str, int] = {}
    for value in ordered:
        bound = "" if unbucketed else str(TIME_BUCKETS[max(0, bisect.bisect_right(TIME_BUCKETS, value) - 1)])
        counts[bound] = counts.get(bound, 0) + 1
    wanted = percentile_ranks(len(ordered), [p])
    walks = bucket_walks(counts, wanted)
    assert sorted(rank for walk in walks for rank in walk.ranks) == sorted(wanted)
    for walk in walks:
        inside = [index + 1 for index, value in enumerate(ordered) if (walk.low is None or value >= walk.low) and (walk.high is None or value < walk.high)]
        assert inside == list(range(walk.first, walk.first + walk.count))
        assert set(walk.ranks) <= set(inside)
    assert len(walks) == 1 or not unbucketed


def test_the_worked_example_conversions() -> None:
    names = ["lead", "offer", "invoice", "paid"]
    rows = funnel_stages(names, {"lead": 1000, "offer": 520, "invoice": 215, "paid": 130}, {}, {})
    assert [None if r["conversion_from_previous"] is None else round(r["conversion_from_previous"], 3) for r in rows] == [None, 0.52, 0.413, 0.605]
    assert rows[-1]["conversion_from_first"] == 0.13
    empty = funnel_stages(names, {}, {}, {})
    assert [r["conversion_from_first"] for r in empty] == [None] * 4


def test_wilson_and_newcombe_match_newcombes_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II, method 10: examples (a) and (b).
    lift = newcombe_lift(56, 70, 48, 80)
    assert lift.lift == pytest.approx(0.2)
    assert (lift.low, lift.high) == (pytest.approx(0.0524, abs=1e-4), pytest.approx(0.3339, abs=1e-4))
    small = newcombe_lift(9, 10, 3, 10)
    assert (small.low, small.high) == (pytest.approx(0.1705, abs=1e-4), pytest.approx(0.8090, abs=1e-4))
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert newcombe_lift(3, 10, 0, 0).lift is None


@given(st.sampled_from(["first", "last", "linear", "position"]), st.integers(1, 12))
def test_each_purchase_is_shared_out_whole(model: str, count: int) -> None:
    assert sum(rank_weight(model, rank, count) for rank in range(1, count + 1)) == pytest.approx(1.0)


def test_position_gives_forty_percent_to_each_end() -> None:
    assert [rank_weight("position", r, 4) for r in range(1, 5)] == pytest.approx([0.4, 0.1, 0.1, 0.4])
    assert [rank_weight("position", r, 2) for r in (1, 2)] == [0.5, 0.5]


@pytest.mark.parametrize(("by", "split"), [
    ("owner", "owner"), ("segment", "segment"), ("field:segment", "segment"), ("region", "region"), ("field:region", "region"),
    ("field:owner", None), ("field:plan", None), ("channel", None), ("product", "products"), ("field:product", None), (None, None),
])
def test_the_splits_kept_in_tallies_are_the_owner_segment_region_and_products(by: str | None, split: str | None) -> None:
    """A field named `owner` is not the lead's owner, and other fields are counted from the facts."""
    assert tallied_split(by) == split


def test_a_lead_moves_when_its_owner_segment_or_region_changes_not_other_fields() -> None:
    before = lead_split_values("ann@shop.example", {"segment": "pro", "plan": "gold"})
    assert lead_split_values("ann@shop.example", {"segment": "pro", "plan": "silver"}) == before
    assert lead_split_values("bob@shop.example", {"segment": "pro"}) != before
    assert lead_split_values("ann@shop.example", {"segment": "pro", "region": "eu"}) != before


def test_a_leads_products_bought_are_one_set_value_that_only_grows() -> None:
    """The value the tallies file a lead under by product: sorted, a purchase without a product as
    `null` first, cut like the report's groups; unchanged (None) when nothing new was bought."""
    assert with_products(None, ["mini-course"]) == '["mini-course"]'
    assert with_products('["mini-course"]', ["coaching", "mini-course", None, ""]) == '[null,"coaching","mini-course"]'
    assert with_products('[null,"coaching","mini-course"]', ["coaching", None]) is None
    assert with_products(None, [7, "é" * 300]) == '["7","' + "é" * PRODUCT_LENGTH + '"]'
    assert products_bought(None) == [None] and products_bought('[null,"a"]') == [None, "a"] and products_bought('["a","b"]') == ["a", "b"]
