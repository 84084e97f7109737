"""The report's arithmetic that is not SQL: pure functions over small aggregated tables.

The database counts and orders (`autofunnel.store.report_queries`); what is left —
turning counts into conversion fractions, two ranked values into a percentile,
two proportions into a lift with its confidence interval, and a touchpoint's
rank into its share of a purchase — lives here, where it is cheap to test
without a database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

ATTRIBUTION_MODELS: Final = ("first", "last", "linear", "position", "time_decay")
LEAD_SPLITS: Final = ("owner", "segment", "region")
"""The lead attributes the running tallies are also kept by (`by=owner`, `by=segment` or
`field:segment`, `by=region`): their reports add tally rows up; another `field:` counts the facts."""
PRODUCTS: Final = "products"
"""The tallies' split of a report `by=product`: a lead's products bought, as one set value (see
`products_bought`), so a lead is filed once; the report counts each set's rows for every product in it."""
TALLY_SPLITS: Final = (*LEAD_SPLITS, PRODUCTS)
"""Every split the running tallies are kept by."""
PRODUCT_LENGTH: Final = 200
"""A product is grouped by its first 200 characters (the tallies' `step` column), from the facts too."""
POSITION_ENDS: Final = 0.4
"""`position` (U-shaped) attribution: 40 % to the first touch, 40 % to the last, 20 % shared by the middle."""
TIME_DECAY_HALF_LIFE_S: Final = 7 * 86400
"""`time_decay` attribution: a touch 7 days before the purchase weighs half as much as one at the purchase."""
PURCHASE_WINDOW: Final = timedelta(days=7)
"""A step's `purchases_7d` counts purchases within this long after its email was sent."""
ATTRIBUTION_WINDOW: Final = timedelta(days=7)
"""The default `window`: a purchase is attributed to the emails clicked within this long before it.
The running tallies keep attribution for this window; another is counted from the facts."""
Z_95: Final = 1.959963984540054
"""The two-sided 95 % point of the standard normal distribution."""


TIME_BUCKETS: Final = (
    0, 60, 300, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 9 * 3600, 12 * 3600, 18 * 3600,
    *(int(day * 86400) for day in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 10, 12, 14, 17, 21, 30, 45, 60, 90, 180, 365)),
)
"""The lower bounds, in seconds, of the buckets the running tallies count a stage's times in
(`timed` and `lasted` rows, the bucket's bound in `detail`; the first bucket holds everything under
a minute). A percentile then walks only the stage entries of the bucket its rank falls in, not every
time below it: the walks were most of a report's time, and they passed the whole history's
entries, not the period's. Human steps (hours, days, weeks) because a funnel's waits are."""
BUCKET_DETAILS: Final = tuple(str(bound) for bound in TIME_BUCKETS)
"""Each bucket as the tallies' `detail` names it: its lower bound in whole seconds."""
BUCKET_OF: Final = {detail: index for index, detail in enumerate(BUCKET_DETAILS)}
"""A bucket's `detail` and its place in `TIME_BUCKETS`."""


@dataclass(frozen=True)
class BucketWalk:
    """The times to read of one bucket: those in `[low, high)` (`None`: unbounded), of which the
    report has `count`, the first at 1-based rank `first` of all; `ranks` are the wanted ones in it."""

    low: float | None
    high: float | None
    first: int
    count: int
    ranks: tuple[int, ...]


def bucket_walks(counts: Mapping[str, int], ranks: Iterable[int]) -> list[BucketWalk]:
    """Where each wanted rank of a stage's times is: the buckets that hold one, from the tallies'
    count per bucket. Counts kept before the buckets (`detail` ''), or any that do not add up,
    give one unbounded bucket of every time, walked as a whole."""
    total = sum(counts.values())
    wanted = sorted(ranks)
    if any(detail not in BUCKET_OF or n < 0 for detail, n in counts.items() if n):
        return [BucketWalk(None, None, 1, total, tuple(wanted))]
    walks: list[BucketWalk] = []
    first = 1
    for detail, n in sorted(((detail, n) for detail, n in counts.items() if n), key=lambda item: BUCKET_OF[item[0]]):
        index = BUCKET_OF[detail]
        inside = tuple(rank for rank in wanted if first <= rank < first + n)
        if inside:
            high = TIME_BUCKETS[index + 1] if index + 1 < len(TIME_BUCKETS) else None
            walks.append(BucketWalk(TIME_BUCKETS[index] if index else None, high, first, n, inside))
        first += n
    return walks


def tallied_split(by: str | None) -> str | None:
    """The split a report's `by` reads from the tallies (`field:segment` is `segment`), if any."""
    if by in LEAD_SPLITS:
        return by
    if by == "product":
        return PRODUCTS
    field = by.removeprefix("field:") if by is not None and by.startswith("field:") else None
    return field if field in LEAD_SPLITS and field != "owner" else None  # `field:owner` is a field, not the owner


def lead_split_values(owner: str | None, fields: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """A lead's values of `LEAD_SPLITS`: when one changes, the lead's tallies move with it."""
    return tuple(owner if split == "owner" else (fields or {}).get(split) for split in LEAD_SPLITS)


def products_bought(products: str | None) -> list[str | None]:
    """The products of a lead's `products` set value (`None`: a purchase without a product, or none
    at all): the groups a report by product counts the lead in."""
    found = json.loads(products) if products else []
    return [None if product is None else str(product) for product in found] or [None]


def with_products(products: str | None, bought: Iterable[str | None]) -> str | None:
    """A lead's `products` set value after it bought `bought` too, or `None` when the set is unchanged.
    Sorted, a purchase without a product first as `null`, each product cut to `PRODUCT_LENGTH`."""
    before = set(json.loads(products)) if products else set()
    after = before | {str(product)[:PRODUCT_LENGTH] or None if product is not None else None for product in bought}
    if after == before:
        return None
    return json.dumps(([None] if None in after else []) + sorted(p for p in after if p is not None), ensure_ascii=False, separators=(",", ":"))


def fraction(part: int, whole: int) -> float | None:
    """`part / whole`, or None when there is no whole to divide (no leads is not 0 %)."""
    return part / whole if whole else None


def percentile_from_ranks(values: Mapping[int, float], count: int, p: float) -> float | None:
    """PostgreSQL's `percentile_cont(p)` from the values at 1-based ranks of an ordered list.

    SQLite has no percentile function; its query returns only the two values
    around each wanted rank (`percentile_ranks`), and this interpolates between them
    exactly as `percentile_cont` does.
    """
    if count == 0:
        return None
    position = p * (count - 1)
    low = math.floor(position)
    below = values[low + 1]
    if low + 1 >= count:
        return below
    return below + (values[low + 2] - below) * (position - low)


def median_and_p90(values: Mapping[int, float], count: int) -> tuple[float | None, float | None]:
    """The report's two percentiles of a time, from the values at their ranks (`percentile_ranks`)."""
    return percentile_from_ranks(values, count, 0.5), percentile_from_ranks(values, count, 0.9)


def percentile_ranks(count: int, ps: Sequence[float]) -> set[int]:
    """The 1-based ranks `percentile_from_ranks` needs for these percentiles."""
    ranks: set[int] = set()
    for p in ps:
        low = math.floor(p * (count - 1))
        ranks.update(rank for rank in (low + 1, low + 2) if rank <= count)
    return ranks


def funnel_stages(
    names: Sequence[str],
    reached: Mapping[str, int],
    skipped: Mapping[str, int],
    times: Mapping[str, tuple[float | None, float | None]],
) -> list[dict[str, Any]]:
    """Each stage's row of the report: leads that reached it, conversions, time to reach it.

    Conversion from the previous stage divides by the previous stage's count,
    from the first by the first stage's; a stage without leads has no conversion
    (None), never a division by zero.
    """
    rows: list[dict[str, Any]] = []
    first = reached.get(names[0], 0) if names else 0
    previous: int | None = None
    for name in names:
        count = reached.get(name, 0)
        median, p90 = times.get(name, (None, None))
        rows.append({
            "stage": name,
            "reached": count,
            "skipped": skipped.get(name, 0),
            "conversion_from_previous": None if previous is None else fraction(count, previous),
            "conversion_from_first": fraction(count, first),
            "time_to_reach": {"median_s": seconds(median), "p90_s": seconds(p90)},
        })
        previous = count
    return rows


def seconds(value: float | None) -> int | None:
    """Durations are reported in whole seconds."""
    return None if value is None else round(value)


def overall_conversion(stages: Sequence[Mapping[str, Any]]) -> float | None:
    """Leads that reached the last stage over leads that reached the first."""
    if not stages:
        return None
    return fraction(stages[-1]["reached"], stages[0]["reached"])


def money(value: float) -> float:
    """Amounts are shown to the cent."""
    return round(value + 0.0, 2)


def revenue_summary(
    gross: float, orders: int, currency: str | None, *, refunded: float = 0.0, refunds: int = 0, refunded_orders: int = 0, unmatched: float = 0.0,
) -> dict[str, Any]:
    """Revenue in one currency, net of refunds (SPEC.md: "Revenue is net of refunds").

    `total` is the net revenue (gross − refunded) and `average_order` the net revenue per
    order; `gross` and `refunded` are shown beside them, with `refunds` (refund events),
    `refunded_orders` (distinct orders) and `unmatched_refunded`, the part of `refunded`
    given back for orders never recorded, which still counts against the revenue.
    """
    net = money(net_revenue(gross, refunded))  # to the cent first: sums added in another order give the same average
    return {
        "total": net,
        "orders": orders,
        "average_order": money(net / orders) if orders else None,
        "currency": currency,
        "gross": money(gross),
        "refunded": money(refunded),
        "refunds": refunds,
        "refunded_orders": refunded_orders,
        "unmatched_refunded": money(unmatched),
    }


def net_revenue(gross: float, refunded: float) -> float:
    """What purchases brought once refunds are taken back: one rule for the revenue, the
    per-email `revenue_7d` and the return on spend."""
    return gross - refunded


@dataclass(frozen=True)
class Lift:
    """Treated minus control conversion, with a two-sided 95 % confidence interval."""

    treated: float | None
    control: float | None
    lift: float | None
    low: float | None
    high: float | None


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for one proportion; well-behaved at 0 %, 100 % and small counts."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    divisor = 1 + z * z / trials
    return max(0.0, (centre - spread) / divisor), min(1.0, (centre + spread) / divisor)


def newcombe_lift(treated_successes: int, treated: int, control_successes: int, control: int) -> Lift:
    """Absolute lift (treated − control) with Newcombe's hybrid score interval (his method 10).

    Built from the two Wilson intervals, it keeps its stated coverage for small
    groups and rates near 0 or 1, where the textbook Wald interval (±1.96·SE)
    is too narrow — and a holdout is small by design.
    """
    if treated == 0 or control == 0:
        return Lift(fraction(treated_successes, treated), fraction(control_successes, control), None, None, None)
    p1, p2 = treated_successes / treated, control_successes / control
    l1, u1 = wilson_interval(treated_successes, treated)
    l2, u2 = wilson_interval(control_successes, control)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Lift(p1, p2, difference, low, high)


def lift_json(lift: Lift) -> dict[str, Any]:
    return {
        "treated_conversion": lift.treated,
        "held_out_conversion": lift.control,
        "lift": lift.lift,
        "ci95": None if lift.low is None else [lift.low, lift.high],
    }


def rank_weight(model: str, rank: int, count: int) -> float:
    """The share of a purchase the touch at 1-based `rank` of `count` earns under a rank-based model.

    first/last: all of it to one end. linear: equal shares. position: 40 % to
    each end and 20 % spread over the middle (one touch: all of it; two: half each).
    The shares of one purchase always add up to 1, so every model's total is the revenue.
    """
    if model == "first":
        return 1.0 if rank == 1 else 0.0
    if model == "last":
        return 1.0 if rank == count else 0.0
    if model == "linear":
        return 1.0 / count
    if model == "position":
        if count <= 2:
            return 1.0 / count
        if rank in (1, count):
            return POSITION_ENDS
        return (1.0 - 2 * POSITION_ENDS) / (count - 2)
    raise ValueError(f"{model!r} is not a rank-based attribution model")


def decay_weight(age_s: float, half_life_s: float = TIME_DECAY_HALF_LIFE_S) -> float:
    """`time_decay`: a touch's raw weight halves with every half-life before the purchase.

    A purchase's touches share it in proportion to these weights; the SQL that
    normalizes them per purchase uses the same formula, `exp(-ln 2 · age / half-life)`.
    """
    return math.exp(-math.log(2) * age_s / half_life_s)


def spend_figures(spend: float, leads: int, customers: int, revenue: float) -> dict[str, Any]:
    """Cost per lead, cost per customer and return on spend (revenue per unit spent)."""
    return {
        "spend": money(spend),
        "cost_per_lead": money(spend / leads) if leads else None,
        "cost_per_customer": money(spend / customers) if customers else None,
        "return_on_spend": revenue / spend if spend else None,
    }
