"""The report's aggregate queries: every figure counted in SQL, for one funnel and period.

Counts, sums and the few ordered values around each percentile are all the
database returns (see `services/report.py` for why that is enough); they land in
`domain.report_body.Figures`, keyed by slice, and the domain shapes them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    join,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, aliased

from autofunnel.domain.statuses import DeliveryStatus
from autofunnel.domain import report as math
from autofunnel.domain.model import Funnel
from autofunnel.domain.report import PRODUCTS, PURCHASE_WINDOW, products_bought, tallied_split
from autofunnel.domain.report_body import LENGTH, PERCENTILES, Figures, Key, ReportQuery, SplitSteps, Times, period_end, period_of_day, tally_into
from autofunnel.store.facts import CHANNEL_ROWS, amount_of, currency_of, day_of, lead_value, order_key, order_of, product_of, refund_of, split_value_in, within_before
from autofunnel.store.tally_statements import (
    ATTRIBUTED, ATTRIBUTION_FIGURES, CALENDAR_DISTINCT, HOLDOUT, PRODUCT_FIGURES, UNMATCHED, decay_of, net_of, purchase_after, touched_by, touches, unsubscribe_from,
)
from autofunnel.store.models import Assignment, CohortTally, Delivery, Event, Lead, Spend, StageEntry, StageEntryProduct
from autofunnel.store.queries import OuterFirst, Unindexed, is_postgres

BY_LEAD = "ix_deliveries_lead_id_flow_sent_at"
"""A lead's emails of a funnel in the order sent: where a purchase finds the emails of the week before it."""
LEAD_STAGES = "sqlite_autoindex_stage_entries_1"
"""A lead's stage entries in a funnel (the unique `lead_id, funnel, stage`; SQLite names the index of a
table's first unique constraint itself): where an event finds its lead's first stage."""


class TimesShortfall(RuntimeError):
    """The tallies count more times of a stage (in a group, or a period's bucket) than its stage
    entries hold (per period, any other number): the times are then counted from the entries."""


def _in_bucket(column: Any, low: float | None, high: float | None) -> list[ColumnElement[bool]]:
    """A time column within a bucket of `TIME_BUCKETS`, `[low, high)` (`None`: unbounded on that side)."""
    return [*([] if low is None else [column >= low]), *([] if high is None else [column < high])]


CALENDAR_DAYS: Final = {
    figure: (distinct, repeated)
    for distinct, days, repeats in CALENDAR_DISTINCT.values()
    for figure, repeated in ((days, False), (repeats, True))
}
"""The calendar tallies of distinct counts: each figure, what it counts for, and whether it is a pair of days to take back."""
REVENUE_SIDE: Final = frozenset({"revenue", "customers", "refunded", "refunded_orders", UNMATCHED, *CALENDAR_DAYS, *PRODUCT_FIGURES})
"""The figures of purchases and refunds: a report by product takes its groups' from `PRODUCT_FIGURES`
(a purchase in the group of its own product), not from the leads' sets of products."""
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")


def _zone_literal(zone: str) -> Any:
    """An IANA zone name written into the SQL (PostgreSQL must see the same expression in the select
    list and in GROUP BY); the name is checked against ZoneInfo by the settings and here again."""
    if not _ZONE_NAME.match(zone):
        raise ValueError(f"{zone!r} is not an IANA zone name")
    ZoneInfo(zone)
    return literal_column(f"'{zone}'")


def period_start(moment: Any, unit: str, *, pg: bool, zone: str = "UTC") -> ColumnElement[str]:
    """The first day of the day, week or month a moment falls in, in the seller's `zone`, as
    'YYYY-MM-DD', in SQL (weeks start on Monday)."""
    if pg:
        return func.to_char(func.date_trunc(unit, func.timezone(_zone_literal(zone), moment)), "YYYY-MM-DD")
    if zone != "UTC":
        moment = func.autofunnel_local_time(moment, _zone_literal(zone))
    if unit == "day":
        return func.date(moment, type_=String)
    if unit == "week":
        return func.date(moment, "weekday 0", "-6 days", type_=String)
    return func.strftime("%Y-%m-01", moment, type_=String)


class ReportQueries:
    """The queries of one report: its funnel, its period (`start` inclusive, `stop` exclusive,
    UTC moments of the seller's days) and its slicing, in one read transaction."""

    def __init__(self, session: Session, funnel: Funnel, query: ReportQuery, *, start: datetime, stop: datetime, zone: str = "UTC") -> None:
        self.session = session
        self.funnel = funnel
        self.q = query
        self.pg = is_postgres(session)
        self.zone = zone
        self.start = start
        self.stop = stop
        self.stages = [stage.name for stage in funnel.stages]
        self._products_table: Any = None
        self._unmatched_tallied: bool | None = None
        """Whether the tallies hold refunds of unknown orders in the period (`None`: not read)."""
        self._holdout_tallied: dict[str, dict[str, int]] | None = None
        """Each holdout group's leads per stage, when the report's own tally rows held them (a cohort report's)."""

    # Scope and keys -----------------------------------------------------------------

    def _in_period(self, moment: Any) -> ColumnElement[bool]:
        return and_(moment >= self.start, moment < self.stop)

    def _in_periods(self, moment: Any, periods: Iterable[str], unit: str) -> ColumnElement[bool]:
        """Within the report, in one of these periods (UTC days: the tallies' periods); adjacent ones as one range."""
        ranges: list[list[datetime]] = []
        for period in sorted(periods):
            start = max(self.start, datetime.combine(date.fromisoformat(period), time(), UTC))
            stop = min(self.stop, datetime.combine(period_end(period, unit), time(), UTC))
            if ranges and ranges[-1][1] >= start:
                ranges[-1][1] = max(ranges[-1][1], stop)
            else:
                ranges.append([start, stop])
        return or_(*(and_(moment >= start, moment < stop) for start, stop in ranges))

    def _period(self, moment: Any) -> ColumnElement[str]:
        return period_start(moment, self.q.interval or "day", pg=self.pg, zone=self.zone)

    def _lead_group(self) -> Any:
        """The value a lead is grouped by: a lead field, or its owner (channels are kept on stage entries)."""
        return lead_value(Lead, self.q.by or "")

    def _keyed(
        self, stmt: Any, rows: Any, moment: Any, *, grouped: bool, periodic: bool, product: Any = None
    ) -> tuple[Any, list[Any]]:
        """`stmt` with the key columns of this slicing added (and grouped by), and those columns.

        `rows` is the entity whose `lead_id` the key belongs to. A `product` split
        groups purchases by their own product when `product` is given, and
        otherwise leads by every product they bought.
        """
        keys: list[Any] = []
        if grouped:
            if self.q.by == "product" and product is not None:
                keys.append(product)
            elif self.q.by == "product":
                products = self._products()
                if rows is StageEntry:
                    stmt = stmt.select_from(OuterFirst(rows, products, self._bought(rows, products)))
                # Other rows were joined to the products after their lead's first stage (`_joined_first`).
                keys.append(products.c.product)
            elif self.q.by == "channel" and rows is StageEntry:
                keys.append(StageEntry.channel)
            elif self.q.by == "channel":
                sc = aliased(StageEntry, name="sc")
                stmt = stmt.join_from(rows, sc, and_(sc.lead_id == rows.lead_id, sc.funnel == self.funnel.slug, sc.position == 0))
                keys.append(sc.channel)
            else:
                stmt = stmt.join_from(rows, Lead, Lead.id == rows.lead_id)
                keys.append(self._lead_group())
        if periodic:
            keys.append(self._period(moment))
        labelled = [key.label(f"k{index}") for index, key in enumerate(keys)]
        return stmt.add_columns(*labelled).group_by(*keys), labelled

    def _products(self) -> Any:
        """Every product ever bought, and `null`, as a small table to split the leads by."""
        if self._products_table is None:
            found = self.session.scalars(select(product_of(Event)).where(Event.type == "purchase", product_of(Event).is_not(None)).distinct())
            parts = [select(literal(str(name), String).label("product")) for name in sorted(found)]
            parts.append(select(cast(literal(None), String).label("product")))
            self._products_table = union_all(*parts).subquery("products")
        return self._products_table

    def _bought(self, rows: Any, products: Any) -> ColumnElement[bool]:
        """Each lead once per product it bought, `null` for a lead that bought nothing (or
        something without a product): a join to the few products, each tried with an index
        lookup of the lead's events. Joining a DISTINCT over all purchases instead made SQLite
        compare every row with every purchase (> 12 min at 100k leads). The join is the last
        one SQLite runs (`OuterFirst`): put first, the four products each re-read every purchase
        since the period's start and looked up the lead's purchases before its first stage
        ruled it out (8.8 s of one day's per-email figures at 1M leads)."""
        e = aliased(Event, name="bought")
        product = product_of(e)
        mine = and_(e.lead_id == rows.lead_id, e.type == "purchase")
        return or_(
            and_(products.c.product.is_not(None), exists().where(mine, product == products.c.product)),
            and_(products.c.product.is_(None), or_(exists().where(mine, product.is_(None)), ~exists().where(mine))),
        )

    def _first_stage(self) -> Any:
        """The lead's first-stage row: who is in the funnel, and since when."""
        return aliased(StageEntry, name="s0")

    def _joined_first(self, stmt: Select[Any], rows: Any, moment: Any, after: Any = None, *, by_products: bool = False) -> tuple[Select[Any], Any]:
        """Restrict rows about a lead to the report's leads: its cohort in the period, or any
        lead already in the funnel at `moment` when counting by calendar.

        `after`: the statement's rows come from this join, which SQLite must read before the
        leads' first stages (a cohort's range of those looks smaller to it than a few events).
        `by_products`: then each row once per product its lead bought (`_bought`)."""
        s0 = self._first_stage()
        on = and_(s0.lead_id == rows.lead_id, s0.funnel == self.funnel.slug, s0.position == 0)
        joined = OuterFirst(after, s0, on, index=LEAD_STAGES) if after is not None else join(rows, s0, on)
        if by_products:
            products = self._products()
            joined = OuterFirst(joined, products, self._bought(rows, products))
        stmt = stmt.select_from(joined)
        if self.q.mode == "cohort":
            return stmt.where(self._in_period(s0.cohort_at), moment >= s0.entered_at), s0.cohort_at
        return stmt.where(self._in_period(moment), moment >= s0.entered_at), moment

    # Figures from the running tallies ----------------------------------------------

    def from_tallies(self, *, times: bool = True, period_times: bool = True, splits: frozenset[str] = frozenset()) -> tuple[Figures, Figures | None, Figures | None]:
        """The whole report, its groups and its periods, added up from `cohort_tallies`
        (a few rows per funnel, day and channel, on the report's basis) with the times read off
        the stage entries (`times`: the whole report's and its groups'; `period_times`: each period's).
        Groups by channel, and by a split in `splits` (those the tallies are kept by: a lead split,
        the products bought); `None` for other groups.

        By product, a lead's figures are kept under its set of products and counted for each
        product in it, and a purchase's (a refund's) under its own product (`PRODUCT_FIGURES`).

        A calendar report's paying customers are its purchase days less the consecutive
        pairs of a lead's purchase days inside one slice, and its refunded orders the same
        of an order's refund days (see `calendar_distinct_parts`).
        """
        t = CohortTally
        split = tallied_split(self.q.by) if tallied_split(self.q.by) in splits else None
        by_product = split == PRODUCTS
        of_report = (
            t.basis == self.q.mode, t.cohort_day >= self.q.start, t.cohort_day <= self.q.end,
            # Attribution is added up on its own, when asked; the revenue per product only by product.
            t.figure.not_in(ATTRIBUTION_FIGURES if by_product else (*ATTRIBUTION_FIGURES, *PRODUCT_FIGURES)),
        )
        in_report = (t.funnel == self.funnel.slug, *of_report)
        periods = Figures() if self.q.interval else None
        by_channel = self.q.by == "channel"

        def summed(by_day: bool, by_channels: bool) -> Select[Any]:
            """The report's tally rows summed per figure, and per day and per channel only when asked:
            the day for the periods (a pair of days taken back needs no later day than the period's end
            outside them: see `_holds`), the channel for a report by channel. Otherwise summed over the
            report's days in SQL (at 1M leads a report by owner read 90 times as many rows, and spent
            0.3 s adding them up here), and over the channels (five times fewer rows for a trend)."""
            return (
                select((t.cohort_day if by_day else null()).label("day"), t.channel if by_channels else literal("").label("channel"),
                       t.figure, t.stage, t.step, t.detail, func.sum(t.n), func.sum(t.amount))
                .where(*in_report, CHANNEL_ROWS)
                .group_by(*([t.cohort_day] if by_day else []), *([t.channel] if by_channels else []), t.figure, t.stage, t.step, t.detail)
            )

        # A report by channel with periods reads its days and its channels apart (a channel's group is not
        # cut into periods): by both, a calendar report by day over 90 days at 1M leads read 63,000 rows, 14,700 this way.
        # Each part with what its rows feed: the whole report (and the periods, by its days), the channels' groups.
        parts = (
            [(summed(True, False), True, False), (summed(False, True), False, True)] if by_channel and periods is not None
            else [(summed(periods is not None, by_channel), True, by_channel)]
        )
        whole = Figures()
        grouped = Figures() if by_channel or split is not None else None
        # Each stage's count of times per bucket (`time_bucket`), per slice: where the walks for its percentiles go.
        ranks: dict[Key, dict[tuple[str, str], dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
        period_ranks: dict[Key, dict[tuple[str, str], dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
        self._unmatched_tallied = False
        # A cohort report's rows hold the holdout's counts (cohort basis): added up here, not read again
        # (the report's days' rows, read for one figure: 9 of 60 ms on SQLite, 14 of 70 on PostgreSQL, 30 days at 1M).
        holdout: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for part, to_whole, to_channels in parts:
            for day, channel, figure, stage, step, detail, n, amount in self.session.execute(part):
                if figure == UNMATCHED:
                    self._unmatched_tallied = self._unmatched_tallied or int(n or 0) > 0
                    continue
                if figure == HOLDOUT:
                    if to_whole:
                        holdout[detail][stage] += int(n or 0)
                    continue
                if figure in PRODUCT_FIGURES:
                    # A purchase's (refund's) figure in the group of its own product; a pair of days' earlier day is in `stage`.
                    self._add_tally([(grouped, (step or None,))], None, day, PRODUCT_FIGURES[figure], "", stage, detail, n, amount)
                    continue
                keyed = [(whole, ())] if to_whole else []
                if to_channels:
                    keyed.append((grouped, (channel or None,)))
                period = (period_of_day(day, self.q.interval or "day"),) if day is not None else None
                if period is not None:
                    keyed.append((periods, period))
                self._add_tally(keyed, periods, day, figure, stage, step, detail, n, amount)
                if figure in ("timed", "lasted"):
                    if to_whole:
                        ranks[()][(figure, stage)][detail] += int(n or 0)
                    if to_channels:
                        ranks[(channel or None,)][(figure, stage)][detail] += int(n or 0)
                    if period is not None:
                        period_ranks[period][(figure, stage)][detail] += int(n or 0)
        self._holdout_tallied = {value: dict(stages) for value, stages in holdout.items()} if self.q.mode == "cohort" else None
        if split is not None:
            # Folded rows of the split, and the writers' rows not folded yet, filed by their leads' value,
            # added up per value: a lead moved to another value leaves rows that cancel out (its products
            # bought may differ between them), and a value whose rows add up to nothing is no group,
            # as the facts have none.
            value_of = split_value_in(self.pg, t.lead_split, split)
            # Summed over the report's days whatever its periods: a group is not cut into periods, and a pair of
            # days only needs its earlier day (`_holds`); by day, `by=owner&interval=week` over 90 days at 1M leads read 92,000 rows, 1,100 this way.
            all_days = null().label("day")
            filed = select(all_days, t.split_value, t.figure, t.stage, t.step, t.detail, func.sum(t.n), func.sum(t.amount)).where(
                *in_report, t.split == split,
            ).group_by(t.split_value, t.figure, t.stage, t.step, t.detail)
            # The writers' rows are the few since the last fold, found by id from the `folded` index: with
            # statistics saying every row is folded, SQLite read all the report's days' rows of every split
            # instead (+80 ms at 1M leads), and without statistics (a database never analyzed) every row of
            # the funnel (+85 ms at 100k leads), unless its funnel is no way in (`Unindexed`).
            unfolded = aliased(CohortTally, name="unfolded")
            fresh = select(all_days, value_of, t.figure, t.stage, t.step, t.detail, func.sum(t.n), func.sum(t.amount)).where(
                Unindexed(t.funnel) == self.funnel.slug, *of_report, t.id.in_(select(unfolded.id).where(unfolded.folded.is_(False))), t.lead_split != "",
            ).group_by(value_of, t.figure, t.stage, t.step, t.detail)
            summed: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0.0])
            for *key, n, amount in self.session.execute(union_all(filed, fresh)):
                summed[tuple(key)][0] += int(n or 0)
                summed[tuple(key)][1] += float(amount or 0.0)
            for (day, value, figure, stage, step, detail), (n, amount) in summed.items():
                if figure == UNMATCHED or not (n or abs(amount) > 1e-9) or (by_product and figure in REVENUE_SIDE):
                    continue
                keys_of = [(product,) for product in products_bought(value)] if by_product else [(value or None,)]
                self._add_tally([(grouped, key) for key in keys_of], None, day, figure, stage, step, detail, n, amount)
                if figure in ("timed", "lasted"):
                    for key in keys_of:
                        ranks[key][(figure, stage)][detail] += int(n or 0)
        if times:
            # Tallies that count more times than the entries hold (none should; a test makes them) give way to the entries.
            try:
                whole.times[()] = self._walked_times(ranks.get((), {}), None)
            except TimesShortfall:
                whole.times[()] = self.times(grouped=False, periodic=False).get((), {})
            if by_channel:
                try:
                    grouped.times = {
                        key: self._walked_times(ranks.get(key, {}), key, whole=(ranks.get((), {}), whole.times[()])) for key in grouped.slices()
                    }
                except TimesShortfall:
                    grouped.times = self.times(grouped=True, periodic=False)
            elif grouped is not None:
                # Each group's timed entries carry the lead's value, as its tallies do. A fact written
                # by one transaction while another changed its lead's value can leave the two apart
                # (README: "Two edge cases"); then the groups' times are counted from their entries.
                by, entries, none = (StageEntryProduct.product, StageEntryProduct, "") if by_product else (getattr(StageEntry, split), StageEntry, None)
                try:
                    grouped.times = {
                        key: self._walked_times(ranks.get(key, {}), key, by, entries, none, whole=(ranks.get((), {}), whole.times[()])) for key in grouped.slices()
                    }
                except TimesShortfall:
                    grouped.times = self.times(grouped=True, periodic=False)
        if periods is not None and period_times:
            try:
                periods.times = self._period_times(period_ranks)
            except TimesShortfall:
                periods.times = self.times(grouped=False, periodic=True)
        return whole, grouped, periods

    def _add_tally(
        self, keyed: list[tuple[Figures, Key]], periods: Figures | None, day: date | None, figure: str, stage: str, step: str, detail: str, n: Any, amount: Any,
    ) -> None:
        """One figure's tally rows of a day (of every day of the report: `None`, when it has no periods),
        summed, added to each slice in `keyed` (`periods`: the slices that are periods)."""
        if figure in CALENDAR_DAYS:
            figure, repeated = CALENDAR_DAYS[figure]
            if repeated:
                # A lead's (an order's) days `step` and `day`, one after the other: one customer
                # (refunded order), not two, in a slice that holds both.
                keyed = [(figures, key) for figures, key in keyed if self._holds(figures is periods, date.fromisoformat(step), day)]
                n = -int(n or 0)
        for figures, key in keyed:
            tally_into(figures, key, figure, stage, step, detail, int(n or 0), float(amount or 0.0))

    def _holds(self, per_period: bool, earlier: date, later: date | None) -> bool:
        """Whether a slice of the report holds both days: the report's period (`later` is in it), and
        with `per_period` also the same one of its periods."""
        if earlier < self.q.start:
            return False
        unit = self.q.interval or "day"
        return not per_period or (later is not None and period_of_day(earlier, unit) == period_of_day(later, unit))

    def _walked_times(
        self, counts: Mapping[tuple[str, str], Mapping[str, int]], group: Key | None, by: Any = StageEntry.channel, entries: Any = StageEntry,
        none: Any = None, *, whole: tuple[Mapping[tuple[str, str], Mapping[str, int]], Times] | None = None,
    ) -> Times:
        """Median and p90 of each stage's time (and of the funnel's length) for the report's leads (its
        cohort, or its calendar period's stage entries), or one group of them: those whose `by`
        (a channel, or a lead split's column) is the group's value (`none` stands for no value), in
        `entries` (the stage entries, or their copies per product bought).

        The tallies say how many times there are in each bucket of `TIME_BUCKETS`, so each
        percentile is a pair of rows at a known rank inside a known bucket: an index walk in
        order within the bucket's range (`OFFSET`), no sort and no other row read. Interpolated
        exactly as `percentile_cont`. A rank past the bucket's middle is walked to from the
        bucket's longest time down. Walking from the shortest time of all, the median passed half
        the stage's entries of the whole history (0.2 s of a report by owner at 1M leads).

        `whole`: the whole report's counts and times. A group's times of a stage are some of the
        whole report's, so a group with as many as the whole has all of them, and their percentiles
        (by product, the buyers of the first product are often every lead past the first stage).
        """
        found: Times = {}
        moment = entries.cohort_at if self.q.mode == "cohort" else entries.entered_at
        for stage, figure, column, bucket in self._timed(entries):
            buckets = counts.get((figure, stage), {})
            count = sum(buckets.values())
            if count == 0:
                continue
            if whole is not None and sum(whole[0].get((figure, stage), {}).values()) == count and bucket in whole[1]:
                found[bucket] = whole[1][bucket]
                continue
            query = select(column).where(entries.funnel == self.funnel.slug, entries.stage == stage, column.is_not(None), self._in_period(moment))
            if group is not None:
                value = none if group[0] is None else group[0]
                query = query.where(by.is_(None) if value is None else by == value)
            values: dict[int, float] = {}
            # Each percentile's pair of ranks walked to on its own: both in one walk would pass every time between them.
            for walk in (walk for p in PERCENTILES for walk in math.bucket_walks(buckets, math.percentile_ranks(count, (p,)))):
                inside = query.where(*_in_bucket(column, walk.low, walk.high))
                lowest, highest = walk.ranks[0] - walk.first, walk.ranks[-1] - walk.first  # 0-based, in the bucket
                if lowest <= walk.count - 1 - highest:
                    rows = self.session.scalars(inside.order_by(column).offset(lowest).limit(highest - lowest + 1))
                    ranked = enumerate(rows, start=walk.first + lowest)
                else:
                    skip = walk.count - 1 - highest  # the bucket's times above the highest wanted
                    rows = self.session.scalars(inside.order_by(column.desc()).offset(skip).limit(highest - lowest + 1))
                    ranked = ((walk.first + highest - index, d) for index, d in enumerate(rows))
                for rank, d in ranked:
                    values[rank] = float(d)
            if len(values) < len(math.percentile_ranks(count, PERCENTILES)):
                raise TimesShortfall(f"the report's tallies count {count} times for stage {stage!r} but fewer stage entries have one")
            found[bucket] = math.median_and_p90(values, count)
        return found

    def _timed(self, entries: Any) -> list[tuple[str, str, Any, str]]:
        """The report's times, each as (stage, tally figure, column of `entries`, name in `Times`):
        each later stage's time from the one before it, and the funnel's length at its last stage."""
        wanted = [(stage, "timed", entries.since_previous_s, stage) for stage in self.stages[1:]]
        if len(self.stages) > 1:
            wanted.append((self.stages[-1], "lasted", entries.since_first_s, LENGTH))
        return wanted

    def _period_times(self, counts: Mapping[Key, Mapping[tuple[str, str], Mapping[str, int]]]) -> dict[Key, Times]:
        """Each period's median and p90 of each stage's time and of the funnel's length, from the
        tallies' count of the period's times per bucket (`counts`, by period).

        Each percentile's pair of ranks lies in a known bucket of its period, so only the buckets
        some period's percentile falls in are read: each once, for the report's whole range, in
        order of time along the stage's time index, its rows dealt out to their periods here, where
        the ranks are picked as `_walked_times` picks them. Counting the periods' times from the
        stage entries read every time of the report (1.1–1.6 s for 30 days at 1M leads on SQLite).
        A bucket whose rows for a period do not number what the tallies say raises `TimesShortfall`.
        """
        e = StageEntry
        moment = self._stage_moment()
        # Each time's UTC day as the tallies file it, put in its period here (the days are few): the
        # period's expression per row cost PostgreSQL a third of the reads.
        day = day_of(self.session, moment)
        unit = self.q.interval or "day"
        period_of: dict[Any, str] = {}
        connection = self.session.connection()
        found: dict[Key, Times] = defaultdict(dict)
        for stage, figure, column, name in self._timed(e):
            walks_of = {}
            for key, per_stage in counts.items():
                buckets = per_stage.get((figure, stage), {})
                if count := sum(buckets.values()):
                    walks_of[key] = (count, math.bucket_walks(buckets, math.percentile_ranks(count, PERCENTILES)))
            needing: dict[tuple[float | None, float | None], list[str]] = defaultdict(list)
            for key, (_, walks) in walks_of.items():
                for bucket in {(walk.low, walk.high) for walk in walks}:
                    needing[bucket].append(key[0])
            read: dict[tuple[float | None, float | None], dict[str, list[float]]] = {}
            for (low, high), wanted in needing.items():
                # A bucket only some periods need is read for those (the rare long or short times of a
                # calendar report by day: 840,000 → 326,000 rows over 90 days at 1M leads); one most
                # need is read whole, a range of moments per period costing more than it leaves out.
                within = self._in_periods(moment, wanted, unit) if 2 * len(wanted) <= len(walks_of) else self._in_period(moment)
                query = select(column, day).where(
                    e.funnel == self.funnel.slug, e.stage == stage, column.is_not(None), within, *_in_bucket(column, low, high),
                ).order_by(column)
                # Through the connection: the session's ORM rows cost as much again as reading them (135,000 at 1M leads).
                times_of = read[(low, high)] = defaultdict(list)
                for d, on in connection.execute(query).all():
                    if (key := period_of.get(on)) is None:
                        key = period_of[on] = period_of_day(on if isinstance(on, date) else date.fromisoformat(on), unit)
                    times_of[key].append(d)
            for key, (count, walks) in walks_of.items():
                values: dict[int, float] = {}
                for walk in walks:
                    times = read[(walk.low, walk.high)].get(key[0], [])
                    if len(times) != walk.count:
                        raise TimesShortfall(f"the tallies count {walk.count} times of stage {stage!r} in a bucket of period {key[0]}, the stage entries {len(times)}")
                    values.update((rank, float(times[rank - walk.first])) for rank in walk.ranks)
                found[key][name] = math.median_and_p90(values, count)
        return found

    # Figures from the stored facts ---------------------------------------------------

    def figures(self, *, grouped: bool, periodic: bool, times: bool = True) -> Figures:
        figures = Figures()
        self._count_stages(figures, grouped, periodic)
        if times:
            figures.times = self.times(grouped=grouped, periodic=periodic)
        self._count_revenue(figures, grouped, periodic)
        self._count_steps(figures, grouped, periodic)
        return figures

    def _stage_moment(self) -> Any:
        return StageEntry.cohort_at if self.q.mode == "cohort" else StageEntry.entered_at

    def _count_stages(self, figures: Figures, grouped: bool, periodic: bool) -> None:
        # Leads that reached each stage: one row per lead and stage, skipped ones included
        # (a lead past a stage has reached it), counted by the period's cohort or entry date.
        moment = self._stage_moment()
        stmt = (
            select(StageEntry.stage, func.count().label("reached"), func.sum(case((StageEntry.skipped, 1), else_=0)).label("skipped"))
            .where(StageEntry.funnel == self.funnel.slug, self._in_period(moment))
            .group_by(StageEntry.stage)
        )
        stmt, keys = self._keyed(stmt, StageEntry, moment, grouped=grouped, periodic=periodic)
        for row in self.session.execute(stmt):
            key = tuple(row._mapping[k.name] for k in keys)
            figures.counts[key][row.stage] = [int(row.reached), int(row.skipped or 0)]

    def times(self, *, grouped: bool, periodic: bool) -> dict[Key, Times]:
        """Median and 90th percentile of each stage's time to reach it and of the funnel's length, per key.

        A stage's time runs from the one before it, for leads who went through that
        one (a lead that jumped over the previous stage has no such time); the
        funnel's length from the first stage to the last, for leads who entered the
        last. PostgreSQL: `percentile_cont`. SQLite has no percentile function: each
        bucket's durations are sorted here and the values at the ranks the two
        percentiles fall between interpolated exactly as `percentile_cont` does.
        Numbering them with window functions instead took 12.7 s for 90 days by week
        at 1M leads (800,000 rows). Unsplit, SQLite is asked for one stage at a time,
        in order of time, which it answers from the covering index (`…_since_previous`,
        `…_since_first`): 1.3 s against 4 s through the cohort days' index and the
        table. Split, all stages come in one statement: per stage, each would read
        the period's cohort days again (1 s each at 1M).
        """
        moment = self._stage_moment()
        one_by_one = not self.pg and not grouped
        wanted: list[tuple[Any, Any, ColumnElement[bool]]] = (
            [(literal(stage), StageEntry.since_previous_s, StageEntry.stage == stage) for stage in self.stages[1:]] if one_by_one
            else [(StageEntry.stage, StageEntry.since_previous_s, true())]
        )
        if len(self.stages) > 1:
            wanted.append((literal(LENGTH), StageEntry.since_first_s, StageEntry.stage == self.stages[-1]))
        parts = []
        for bucket, column, which in wanted:
            stmt = select(column.label("d"), bucket.label("bucket")).where(
                StageEntry.funnel == self.funnel.slug, which, column.is_not(None), self._in_period(moment)
            )
            stmt, _ = self._keyed(stmt, StageEntry, moment, grouped=grouped, periodic=periodic)
            parts.append(stmt.group_by(None).order_by(column) if one_by_one else stmt.group_by(None))
        found: dict[Key, Times] = defaultdict(dict)
        if self.pg:
            durations = union_all(*parts).subquery("durations")
            keys = [column for column in durations.c if column.name.startswith("k")]
            stmt = select(
                *keys, durations.c.bucket, *(func.percentile_cont(p).within_group(durations.c.d) for p in PERCENTILES)
            ).group_by(*keys, durations.c.bucket)
            for row in self.session.execute(stmt):
                found[tuple(row[: len(keys)])][row[len(keys)]] = (row[-2], row[-1])
            return found
        ordered: dict[tuple[Key, str], list[float]] = defaultdict(list)
        for stmt in parts:
            for row in self.session.execute(stmt):  # the duration, its bucket, then the key
                ordered[(tuple(row[2:]), row[1])].append(row[0])
        for (key, bucket), durations_of in ordered.items():
            durations_of.sort()
            count = len(durations_of)
            at_ranks = {rank: float(durations_of[rank - 1]) for rank in math.percentile_ranks(count, PERCENTILES)}
            found[key][bucket] = math.median_and_p90(at_ranks, count)
        return found

    def _purchases(self) -> Any:
        return aliased(Event, name="p")

    def _count_revenue(self, figures: Figures, grouped: bool, periodic: bool) -> None:
        """Revenue, orders and paying customers per currency: purchases by the report's leads made
        after they entered the funnel; then their refunds."""
        p = self._purchases()
        currency = func.coalesce(p.properties["currency"].as_string(), "")
        stmt = select(
            currency.label("currency"), func.sum(amount_of(self.session, p)).label("total"), func.count().label("orders"),
            func.count(p.lead_id.distinct()).label("customers"),
        ).select_from(p).where(p.type == "purchase").group_by(currency)
        # By calendar, the period's purchases (`type, at`) find their leads' first stages: from
        # the stage entries' side SQLite read every lead's purchases (5.0 s at 1M leads against 4.0).
        stmt, moment = self._joined_first(stmt, p, p.at, after=p if self.q.mode == "calendar" else None)
        stmt, keys = self._keyed(stmt, p, moment, grouped=grouped, periodic=periodic, product=product_of(p))
        for row in self.session.execute(stmt):
            key = tuple(row._mapping[k.name] for k in keys)
            into = figures.revenue[key].setdefault(row.currency, [0.0, 0, 0, 0.0, 0, 0])
            into[:3] = [float(row.total or 0), int(row.orders), int(row.customers)]
        # Refunds by the same leads, counted by their own moment like a purchase: whether or not
        # the order they give money back for was ever recorded.
        r = self._refunds()
        refund_currency = currency_of(r)
        stmt = select(
            refund_currency.label("currency"), func.sum(amount_of(self.session, r)).label("total"), func.count().label("refunds"),
            func.count(order_key(r).distinct()).label("orders"),
        ).where(r.type == "refund").group_by(refund_currency)
        stmt, moment = self._joined_first(stmt, r, r.at, after=r)
        stmt, keys = self._keyed(stmt, r, moment, grouped=grouped, periodic=periodic, product=product_of(r))
        for row in self.session.execute(stmt):
            key = tuple(row._mapping[k.name] for k in keys)
            into = figures.revenue[key].setdefault(row.currency, [0.0, 0, 0, 0.0, 0, 0])
            into[3:] = [float(row.total or 0), int(row.refunds), int(row.orders)]

    def _refunds(self) -> Any:
        return aliased(Event, name="r")

    def unmatched_refunds(self) -> list[Row[Any]]:
        """The report's refunds of orders never recorded (no purchase of the lead has that
        `order_id`): they count against the revenue all the same, and are listed.
        Each row: lead_id, order_id, at, amount, currency. None are looked for when the tallies read for this
        report hold none: looking costs a lookup per refund of the period (0.5 s of a 90-day
        report at 1M leads on PostgreSQL)."""
        if self._unmatched_tallied is False:
            return []
        r, p = self._refunds(), self._purchases()
        stmt = (
            select(r.id, r.lead_id, r.at, order_of(r).label("order_id"), amount_of(self.session, r).label("amount"), currency_of(r).label("currency"))
            .select_from(r)
            # `r.at >= start` adds nothing (a refund counts only from its lead's entry, which is in or
            # after the period's start in either mode) but lets the query start from the few refunds
            # since then (`type, at` index) rather than from every lead of the period: 4.4 s → ms at 1M leads.
            .where(r.type == "refund", r.at >= self.start, ~select(p.id).where(p.type == "purchase", refund_of(r, p)).exists())
            .order_by(r.at, r.id)
        )
        stmt, _ = self._joined_first(stmt, r, r.at)
        return list(self.session.execute(stmt))

    def _sent(self, columns: Iterable[Any], grouped: bool, periodic: bool, source: Any = None) -> Any:
        """Emails of this funnel that were sent to the report's leads, with `columns` per step.

        `source` is a join of events that leads to the emails; the query starts from them, fewer than the period's emails (unsubscribes, purchases,
        refunds), each finding its email by an index: counting them from the emails' side
        probed every email sent in the period for events of its lead (11–12 s a query at 1M
        leads on SQLite).
        """
        d = Delivery
        stmt = select(d.stage, d.step_id, *columns).where(d.flow == self.funnel.slug, d.kind == "email", d.status == DeliveryStatus.SENT)
        stmt = stmt.group_by(d.stage, d.step_id)
        stmt, moment = self._joined_first(stmt, d, d.sent_at, after=source, by_products=grouped and self.q.by == "product")
        stmt, keys = self._keyed(stmt, d, moment, grouped=grouped, periodic=periodic)
        for row in self.session.execute(stmt):
            yield tuple(row._mapping[k.name] for k in keys), (row.stage, row.step_id), row

    def _count_steps(self, figures: Figures, grouped: bool, periodic: bool) -> None:
        # Sent, opened and clicked by people (bots never set opened_at/clicked_at), the
        # unsubscribes made from each email, and purchases within 7 days of it with their
        # amount and the refunds of those purchases (revenue_7d is net).
        d = Delivery
        for key, step, row in self._sent([func.count().label("sent"), func.count(d.opened_at).label("opened"), func.count(d.clicked_at).label("clicked")], grouped, periodic):
            figures.steps[key][step] = [int(row.sent), int(row.opened), int(row.clicked), 0, 0, 0.0, 0.0]
        u, p, r = aliased(Event, name="u"), self._purchases(), self._refunds()
        # A purchase counts from the email's sending on, and every email counted was sent in or
        # after the period's start (its own moment in calendar mode, its lead's entry in cohort
        # mode), so `p.at >= start` only lets the purchases be read from that day on.
        after = and_(purchase_after(self.session, p, d), p.at >= self.start, within_before(self.session, d.sent_at, p.at, PURCHASE_WINDOW))
        followed: list[tuple[list[int], list[Any], Any]] = [
            ([3], [func.count()], OuterFirst(u, d, unsubscribe_from(u, d))),
            ([4, 5], [func.count(), func.sum(amount_of(self.session, p))], OuterFirst(p, d, after, index=BY_LEAD)),
            ([6], [func.sum(amount_of(self.session, r))], OuterFirst(OuterFirst(r, p, refund_of(r, p)), d, after, index=BY_LEAD)),
        ]
        for indexes, columns, source in followed:
            for key, step, row in self._sent([column.label(f"f{index}") for index, column in zip(indexes, columns, strict=True)], grouped, periodic, source):
                into = figures.steps[key].setdefault(step, [0, 0, 0, 0, 0, 0.0, 0.0])
                for index in indexes:
                    into[index] = row._mapping[f"f{index}"] or 0

    # Holdout, variants, spend and attribution -----------------------------------------

    def holdout_counts(self) -> dict[str, dict[str, int]]:
        """Per holdout group (treated / held_out), how many of the period's cohort reached each stage:
        from the tallies (UTC days), or in another zone from the stage entries."""
        t, a, e = CohortTally, Assignment, StageEntry
        if self._holdout_tallied is not None:
            return self._holdout_tallied
        if self.zone == "UTC":
            stmt = (
                select(t.detail, t.stage, func.sum(t.n))
                .where(t.funnel == self.funnel.slug, t.basis == "cohort", t.figure == HOLDOUT, t.cohort_day >= self.q.start, t.cohort_day <= self.q.end, CHANNEL_ROWS)
                .group_by(t.detail, t.stage)
            )
        else:
            stmt = (
                select(a.value, e.stage, func.count())
                .join(a, and_(a.lead_id == e.lead_id, a.flow == e.funnel, a.name == "holdout"))
                .where(e.funnel == self.funnel.slug, self._in_period(e.cohort_at))
                .group_by(a.value, e.stage)
            )
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for value, stage, n in self.session.execute(stmt):
            counts[value][stage] = int(n)
        return counts

    def variant_counts(self, steps: SplitSteps) -> dict[tuple[str, str], tuple[int, int]]:
        """A/B: per variant of each split `send` step, the cohort's leads who got that pick and
        how many of them went on to the stage after the step's."""
        a = Assignment
        s0, after = self._first_stage(), aliased(StageEntry, name="after")
        next_position = case({name: position + 1 for name, (position, _, _) in steps.items()}, value=a.name)
        stmt = (
            select(a.name, a.value, func.count().label("leads"), func.count(after.id).label("converted"))
            .join(s0, and_(s0.lead_id == a.lead_id, s0.funnel == self.funnel.slug, s0.position == 0))
            .outerjoin(after, and_(after.lead_id == a.lead_id, after.funnel == self.funnel.slug, after.position == next_position))
            .where(a.flow == self.funnel.slug, a.name.in_(list(steps)), self._in_period(s0.cohort_at))
            .group_by(a.name, a.value)
        )
        return {(name, value): (int(leads), int(converted)) for name, value, leads, converted in self.session.execute(stmt)}

    def spent(self, key: Key) -> dict[str, float]:
        """Spend per currency in the period: for the whole report (`()`), or for one channel's group."""
        stmt = (
            select(Spend.currency, func.sum(Spend.amount))
            .where(Spend.day >= self.q.start, Spend.day <= self.q.end)
            .group_by(Spend.currency)
        )
        if key:
            stmt = stmt.where(Spend.channel == key[0])
        return {currency: float(amount) for currency, amount in self.session.execute(stmt)}

    def attribution_shares(self) -> tuple[dict[tuple[str | None, str], float], dict[tuple[str | None, str], float]]:
        """Net revenue shared out to channels and to emails under the asked model, by (label, currency).

        Channels: every source the lead was seen with (its subscriptions) before the
        purchase. Emails: every email of this funnel a person clicked within `window`
        before it. Each purchase is shared at its net amount (less the refunds of its order).
        """
        p = self._purchases()
        purchases = select(p.id.label("pid"), p.lead_id, p.at, net_of(self.session)(p).label("amount"), currency_of(p).label("currency"), literal(self.funnel.slug).label("funnel"))
        purchases, _ = self._joined_first(purchases.where(p.type == "purchase"), p, p.at)
        bought = purchases.subquery("bought")
        return self._attribute(bought, "channel"), self._attribute(bought, "email")

    def tallied_attribution(self) -> tuple[dict[tuple[str | None, str], float], dict[tuple[str | None, str], float]]:
        """`attribution_shares` of the default window added up from the running tallies: per label,
        currency and place among a purchase's touches (the rank-based models), or time-decay shares."""
        t = CohortTally
        model = self.q.attribution or "last"
        figures = {kind: pair[1] if model == "time_decay" else pair[0] for kind, pair in ATTRIBUTED.items()}
        stmt = (
            select(t.figure, t.stage, t.step, t.detail, func.sum(t.amount))
            .where(t.funnel == self.funnel.slug, t.basis == self.q.mode, t.cohort_day >= self.q.start, t.cohort_day <= self.q.end, t.figure.in_(list(figures.values())), CHANNEL_ROWS)
            .group_by(t.figure, t.stage, t.step, t.detail)
        )
        shares: dict[str, dict[tuple[str | None, str], float]] = {kind: defaultdict(float) for kind in figures}
        kind_of = {figure: kind for kind, figure in figures.items()}
        for figure, place, label, currency, amount in self.session.execute(stmt):
            weight = 1.0
            if model != "time_decay":
                rank, _, count = place.partition("/")
                weight = math.rank_weight(model, int(rank), int(count))
            shares[kind_of[figure]][(label, currency)] += float(amount or 0.0) * weight
        return shares["channel"], shares["email"]

    def _attribute(self, bought: Any, kind: str) -> dict[tuple[str | None, str], float]:
        """Each purchase's revenue shared among its touches of `kind` (at or before it)."""
        model = self.q.attribution or "last"
        touch = touches(self.session, kind)
        one = {"partition_by": bought.c.pid}
        joined = (
            select(
                bought.c.pid, bought.c.amount, bought.c.currency, touch.c.label, decay_of(self.session, bought.c.at, touch.c.at).label("w"),
                func.row_number().over(**one, order_by=(touch.c.at, touch.c.id)).label("rank"), func.count().over(**one).label("n"),
            )
            .join(touch, touched_by(self.session, bought, kind, touch, self.q.window))
            .subquery("touched")
        )
        shares: dict[tuple[str | None, str], float] = defaultdict(float)
        if model == "time_decay":
            weighted = select(joined.c.label, joined.c.currency, joined.c.amount, joined.c.w, func.sum(joined.c.w).over(partition_by=joined.c.pid).label("total_w")).subquery("weighted")
            stmt = select(weighted.c.label, weighted.c.currency, func.sum(weighted.c.amount * weighted.c.w / weighted.c.total_w)).group_by(weighted.c.label, weighted.c.currency)
            for label, cur, value in self.session.execute(stmt):
                shares[(label, cur)] += float(value or 0)
            return shares
        stmt = select(joined.c.label, joined.c.currency, joined.c.rank, joined.c.n, func.sum(joined.c.amount)).group_by(
            joined.c.label, joined.c.currency, joined.c.rank, joined.c.n
        )
        for label, cur, rank, n, value in self.session.execute(stmt):
            shares[(label, cur)] += float(value or 0) * math.rank_weight(model, int(rank), int(n))
        return shares
