"""The funnel report (SPEC.md "Reports"): counted in SQL over stage entries, finished in `domain.report`.

Every figure is an aggregate the database computes — counts, sums and the few
ordered values around each percentile — so the report costs one pass over the
period's stage entries, never a lead loaded into Python. Two facts of the
engine make the counting simple:

- A lead has a stage-entry row for every stage up to the furthest it reached:
  stages jumped over are written as `skipped` rows at the moment of the jump.
  So "leads that reached stage k (or a later one)" is the number of rows for
  stage k, and the funnel never widens.
- Every row carries `cohort_at`, the moment the lead entered the first stage,
  so a cohort report filters one indexed column instead of joining.

`mode=cohort` takes the leads that entered the first stage in the period and
counts whatever they did afterwards, whenever; `mode=calendar` counts what
happened in the period (stage entries, purchases, emails sent), whoever did it.
Holdout lift and A/B variants are always compared on the period's cohort: a
comparison is only fair between groups picked at the same moment.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session, aliased

from autofunnel.domain import report as math
from autofunnel.domain.durations import DurationError, parse_duration
from autofunnel.domain.model import Funnel, Send
from autofunnel.errors import InvalidInputError
from autofunnel.services.runtime import Runtime
from autofunnel.services.tallies import PURCHASE_WINDOW, amount_of, before, currency_of, order_key, order_of, refund_of, tallies_current
from autofunnel.store.models import Assignment, CohortTally, Delivery, Event, Lead, Spend, StageEntry
from autofunnel.store.queries import is_postgres

MODES: Final = ("cohort", "calendar")
INTERVALS: Final = ("day", "week", "month")
GROUPINGS: Final = ("channel", "product", "segment", "region", "owner")
DEFAULT_DAYS: Final = 30
"""Without `from`/`to` the report covers the last 30 days, today included (the seller's today)."""
PARAMETERS: Final = ("from", "to", "mode", "by", "interval", "attribution", "window")
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LENGTH: Final = "*funnel length*"
"""The bucket that carries funnel-length durations through the percentile query; not a valid stage slug."""
_PS: Final = (0.5, 0.9)


def seller_today(rt: Runtime) -> date:
    """Today in the seller's zone (`AUTOFUNNEL_TIMEZONE`): where a default period ends."""
    return rt.clock.now().astimezone(ZoneInfo(rt.settings.timezone)).date()


def day_start(day: date, zone: str) -> datetime:
    """The UTC moment the seller's day begins (midnight in `zone`, whatever its offset that day)."""
    return datetime.combine(day, time(0), ZoneInfo(zone)).astimezone(UTC)


_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")


def _zone_literal(zone: str) -> Any:
    """An IANA zone name written into the SQL (PostgreSQL must see the same expression in the select
    list and in GROUP BY); the name is checked against ZoneInfo by the settings and here again."""
    if not _ZONE_NAME.match(zone):
        raise ValueError(f"{zone!r} is not an IANA zone name")
    ZoneInfo(zone)
    return literal_column(f"'{zone}'")


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
    window: timedelta = timedelta(days=7)
    window_text: str = "7d"


def parse_report_query(funnel: str, params: Mapping[str, str | None], today: date) -> ReportQuery:
    """The report's options as the API's query string and the CLI give them; a bad one names its field."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise InvalidInputError(f"unknown parameter {unknown[0]!r}; known: {', '.join(PARAMETERS)}", field=unknown[0], code="unknown_field")
    mode = params.get("mode") or "cohort"
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}", field="mode")
    end = _day(params.get("to"), "to") or today
    start = _day(params.get("from"), "from") or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidInputError(f"from ({start}) is after to ({end})", field="from")
    by = params.get("by") or None
    if by is not None and by not in GROUPINGS and not (by.startswith("field:") and _FIELD_NAME.match(by[6:])):
        raise InvalidInputError(f"by must be one of {', '.join(GROUPINGS)} or field:<name>, not {by!r}", field="by")
    interval = params.get("interval") or None
    if interval is not None and interval not in INTERVALS:
        raise InvalidInputError(f"interval must be one of {', '.join(INTERVALS)}, not {interval!r}", field="interval")
    attribution = params.get("attribution") or None
    if attribution is not None and attribution not in math.ATTRIBUTION_MODELS:
        raise InvalidInputError(f"attribution must be one of {', '.join(math.ATTRIBUTION_MODELS)}, not {attribution!r}", field="attribution")
    window_text = (params.get("window") or "7d").strip()
    try:
        window = parse_duration(window_text)
    except DurationError as exc:
        raise InvalidInputError(str(exc), field="window") from None
    if window <= timedelta(0):
        raise InvalidInputError("window must be longer than zero", field="window")
    return ReportQuery(funnel, start, end, mode, by, interval, attribution, window, window_text)


def _day(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInputError(f"{value!r} is not a date such as 2026-03-01", field=name) from None


def funnel_report(rt: Runtime, query: ReportQuery, *, count_facts: bool = False) -> dict[str, Any]:
    """The report for one funnel and period, as SPEC.md's JSON; one read transaction.

    `count_facts` counts every figure from the stored facts even where the running
    tallies have it: slower, and the yardstick the tests hold the tallies to.
    """
    funnel = rt.flow(query.funnel)
    if not isinstance(funnel, Funnel):
        raise InvalidInputError(f"{query.funnel!r} is a sequence; reports are about funnels", field="funnel", code="not_a_funnel")
    with rt.db.read() as session:
        if is_postgres(session):
            # A report sorts and hashes a few hundred thousand rows per query: in memory rather
            # than in temporary files, and without JIT compilation, which costs more than it
            # saves on queries this short (measured: 0.1–0.4 s a query at 1M leads).
            session.execute(text("SET LOCAL work_mem = '64MB'"))
            session.execute(text("SET LOCAL jit = off"))
        return _Report(session, funnel, query, count_facts=count_facts, zone=rt.settings.timezone).build()


Key = tuple[Any, ...]


@dataclass
class _Figures:
    """The aggregates of one slicing of the report (whole, by group, or by period), by key."""

    counts: dict[Key, dict[str, list[int]]] = field(default_factory=lambda: defaultdict(dict))
    times: dict[Key, dict[str, tuple[float | None, float | None]]] = field(default_factory=lambda: defaultdict(dict))
    revenue: dict[Key, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(dict))
    """Per currency: `_REVENUE_FIGURES`."""
    steps: dict[Key, dict[tuple[str, str], list[float]]] = field(default_factory=lambda: defaultdict(dict))
    """Per stage and step: `_STEP_FIGURES`."""

    def slices(self) -> list[Key]:
        found = set(self.counts) | set(self.revenue) | set(self.steps)
        return sorted(found, key=lambda key: tuple((value is None, str(value)) for value in key))

    def rolled_up(self) -> _Figures:
        """The same counts and sums over all keys; valid when the keys split the leads (a partition)."""
        total = _Figures()
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


_STEP_FIGURES: Final = ("sent", "opened", "clicked", "unsubscribed", "purchases_7d", "gross_7d", "refunded_7d")
_REVENUE_FIGURES: Final = ("gross", "orders", "customers", "refunded", "refunds", "refunded_orders")


def _tally_into(figures: _Figures, key: Key, figure: str, stage: str, step: str, detail: str, n: int, amount: float) -> None:
    """Add one tally row to the figures of one slice, in the shape the fact-counting queries give."""
    if figure in ("reached", "skipped"):
        figures.counts[key].setdefault(stage, [0, 0])[figure == "skipped"] += n
    elif figure in _STEP_FIGURES or figure == "refunds_7d":
        into = figures.steps[key].setdefault((stage, step), [0] * len(_STEP_FIGURES))
        if figure == "refunds_7d":
            into[6] += amount
        else:
            into[_STEP_FIGURES.index(figure)] += n
        if figure == "purchases_7d":
            into[5] += amount
    elif figure in ("revenue", "customers", "refunded", "refunded_orders"):
        into = figures.revenue[key].setdefault(detail, [0.0] + [0] * (len(_REVENUE_FIGURES) - 1))
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


def _period_start(day: date, unit: str) -> str:
    """The first day of the period (`interval`) a day falls in, as the SQL `_period` gives it (weeks start on Monday)."""
    if unit == "week":
        day -= timedelta(days=day.weekday())
    elif unit == "month":
        day = day.replace(day=1)
    return day.isoformat()


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


class _Report:
    def __init__(self, session: Session, funnel: Funnel, query: ReportQuery, *, count_facts: bool = False, zone: str = "UTC") -> None:
        self.session = session
        self.funnel = funnel
        self.q = query
        self.pg = is_postgres(session)
        self.zone = zone
        self.start = day_start(query.start, zone)
        self.stop = day_start(query.end + timedelta(days=1), zone)
        self.stages = [stage.name for stage in funnel.stages]
        self._known_products: list[str] | None = None
        # A cohort report, whole or by channel, is added up from the running tallies, which are
        # kept per UTC day; other slicings (calendar days, lead fields, products), and every
        # report in another zone than UTC, count the stored facts.
        self.tallied = query.mode == "cohort" and query.by in (None, "channel") and not count_facts and zone == "UTC" and tallies_current(session)

    # Assembling -------------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        q = self.q
        if self.tallied:
            whole, grouped, periods = self._from_tallies()
        else:
            grouped = self._figures(grouped=True, periodic=False) if q.by else None
            periods = self._figures(grouped=False, periodic=True) if q.interval else None
            # Counts and sums of the whole report are the sums over a slicing that puts each lead
            # in exactly one slice: groups of a lead attribute, or cohort periods. Only the
            # percentiles need a query of their own.
            partition = grouped if grouped is not None and q.by != "product" else periods if q.mode == "cohort" else None
            if partition is not None:
                whole = partition.rolled_up()
                whole.times = self._times(grouped=False, periodic=False)
            else:
                whole = self._figures(grouped=False, periodic=False)
        unmatched = self._unmatched_refunds() if any(figures[4] for figures in whole.revenue.get((), {}).values()) else []
        body: dict[str, Any] = {
            "funnel": self.funnel.slug, "mode": q.mode, "from": q.start.isoformat(), "to": q.end.isoformat(),
            "by": q.by, "interval": q.interval,
            **self._section(whole, (), unmatched),
            "unmatched_refunds": unmatched,
            "holdout": self._holdout(),
            "variants": self._variants(),
            "spend": self._spend(whole, ()),
        }
        if q.attribution:
            body["attribution"] = self._attribution(whole)
        if grouped is not None:
            body["groups"] = [
                {"by": q.by, "value": key[0], **self._section(grouped, key), **({"spend": self._spend(grouped, key)} if q.by == "channel" else {})}
                for key in grouped.slices()
            ]
        if periods is not None:
            body["periods"] = [{"period": key[0], **self._section(periods, key)} for key in periods.slices()]
        return body

    def _section(self, figures: _Figures, key: Key, unmatched: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        counts = figures.counts.get(key, {})
        times = figures.times.get(key, {})
        stages = math.funnel_stages(
            self.stages,
            {name: values[0] for name, values in counts.items()},
            {name: values[1] for name, values in counts.items()},
            times,
        )
        length = times.get(_LENGTH, (None, None))
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
            for currency, (gross, orders, customers, refunded, refunds, orders_refunded) in sorted(revenue.items(), key=lambda item: -item[1][0])
        ]
        return {
            "stages": stages,
            "overall_conversion": math.overall_conversion(stages),
            "funnel_length": {"median_s": math.seconds(length[0]), "p90_s": math.seconds(length[1])},
            "revenue": by_currency[0] if by_currency else math.revenue_summary(0.0, 0, None) | {"customers": 0},
            "revenue_by_currency": by_currency,
            "steps": self._steps_json(figures.steps.get(key, {})),
        }

    def _steps_json(self, steps: Mapping[tuple[str, str], list[float]]) -> list[dict[str, Any]]:
        """One row per `send` step of the funnel, in the funnel's order, then any step no longer in it."""
        order = [(stage.name, step.id) for stage in self.funnel.stages for step in stage.steps if isinstance(step.action, Send)]
        order += sorted(set(steps) - set(order))
        rows = []
        for stage, step in order:
            sent, opened, clicked, unsubscribed, purchases, gross, refunded = steps.get((stage, step), [0] * len(_STEP_FIGURES))
            rows.append({
                "stage": stage, "step": step, "sent": int(sent), "opened": int(opened), "clicked": int(clicked),
                "unsubscribed": int(unsubscribed), "purchases_7d": int(purchases), "revenue_7d": math.money(math.net_revenue(gross, refunded)),
                "open_rate": math.fraction(opened, sent), "click_rate": math.fraction(clicked, sent),
            })
        return rows

    # Scope and keys -----------------------------------------------------------------

    def _in_period(self, moment: Any) -> ColumnElement[bool]:
        return and_(moment >= self.start, moment < self.stop)

    def _period(self, moment: Any) -> ColumnElement[str]:
        return period_start(moment, self.q.interval or "day", pg=self.pg, zone=self.zone)

    def _lead_group(self) -> Any:
        """The value a lead is grouped by: a lead field, or its owner (channels are kept on stage entries)."""
        by = self.q.by or ""
        if by == "owner":
            return Lead.owner
        name = by.removeprefix("field:")
        return Lead.fields[name].as_string()

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
                # Each lead once per product it bought, `null` for a lead that bought nothing (or
                # something without a product): a join to the few products, each tried with an
                # index lookup of the lead's events. Joining a DISTINCT over all purchases
                # instead made SQLite compare every row with every purchase (> 12 min at 100k leads).
                products = self._products()
                e = aliased(Event, name="bought")
                product = e.properties["product"].as_string()
                mine = and_(e.lead_id == rows.lead_id, e.type == "purchase")
                stmt = stmt.join_from(rows, products, or_(
                    and_(products.c.product.is_not(None), exists().where(mine, product == products.c.product)),
                    and_(products.c.product.is_(None), or_(exists().where(mine, product.is_(None)), ~exists().where(mine))),
                ))
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
        if self._known_products is None:
            found = self.session.scalars(
                select(Event.properties["product"].as_string()).where(Event.type == "purchase", Event.properties["product"].as_string().is_not(None)).distinct()
            )
            self._known_products = sorted(str(name) for name in found)
        parts = [select(literal(name, String).label("product")) for name in self._known_products]
        parts.append(select(cast(literal(None), String).label("product")))
        return union_all(*parts).subquery("products")

    def _first_stage(self) -> Any:
        """The lead's first-stage row: who is in the funnel, and since when."""
        return aliased(StageEntry, name="s0")

    def _joined_first(self, stmt: Select[Any], rows: Any, moment: Any) -> tuple[Select[Any], Any]:
        """Restrict rows about a lead to the report's leads: its cohort in the period, or any
        lead already in the funnel at `moment` when counting by calendar."""
        s0 = self._first_stage()
        stmt = stmt.join_from(rows, s0, and_(s0.lead_id == rows.lead_id, s0.funnel == self.funnel.slug, s0.position == 0))
        if self.q.mode == "cohort":
            return stmt.where(self._in_period(s0.cohort_at), moment >= s0.entered_at), s0.cohort_at
        return stmt.where(self._in_period(moment), moment >= s0.entered_at), moment

    # Figures from the running tallies ----------------------------------------------

    def _from_tallies(self) -> tuple[_Figures, _Figures | None, _Figures | None]:
        """The whole report, its channel groups and its periods, added up from `cohort_tallies`
        (a few rows per funnel, day and channel) with the times read off the stage entries."""
        t = CohortTally
        stmt = (
            select(t.cohort_day, t.channel, t.figure, t.stage, t.step, t.detail, func.sum(t.n), func.sum(t.amount))
            .where(t.funnel == self.funnel.slug, t.cohort_day >= self.q.start, t.cohort_day <= self.q.end)
            .group_by(t.cohort_day, t.channel, t.figure, t.stage, t.step, t.detail)
        )
        whole = _Figures()
        grouped = _Figures() if self.q.by == "channel" else None
        periods = _Figures() if self.q.interval else None
        ranks: dict[Key, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
        for day, channel, figure, stage, step, detail, n, amount in self.session.execute(stmt):
            keyed = [(whole, ())]
            if grouped is not None:
                keyed.append((grouped, (channel or None,)))
            if periods is not None:
                keyed.append((periods, (_period_start(day, self.q.interval or "day"),)))
            for figures, key in keyed:
                _tally_into(figures, key, figure, stage, step, detail, int(n or 0), float(amount or 0.0))
            if figure in ("timed", "lasted"):
                ranks[()][(figure, stage)] += int(n or 0)
                if grouped is not None:
                    ranks[(channel or None,)][(figure, stage)] += int(n or 0)
        whole.times[()] = self._walked_times(ranks.get((), {}), None)
        if grouped is not None:
            for key in grouped.slices():
                grouped.times[key] = self._walked_times(ranks.get(key, {}), key)
        if periods is not None:
            periods.times = self._times(grouped=False, periodic=True)
        return whole, grouped, periods

    def _walked_times(self, counts: Mapping[tuple[str, str], int], group: Key | None) -> dict[str, tuple[float | None, float | None]]:
        """Median and p90 of each stage's time (and of the funnel's length) for the cohort, or one channel of it.

        The tallies say how many times there are (n), so each percentile is the pair
        of rows at a known rank: an index walk in order (`OFFSET`), no sort and no
        other row read. Interpolated exactly as `percentile_cont`.
        """
        found: dict[str, tuple[float | None, float | None]] = {}
        wanted = [(stage, "timed", StageEntry.since_previous_s, stage) for stage in self.stages[1:]]
        if len(self.stages) > 1:
            wanted.append((self.stages[-1], "lasted", StageEntry.since_first_s, _LENGTH))
        for stage, figure, column, bucket in wanted:
            count = counts.get((figure, stage), 0)
            if count == 0:
                continue
            query = (
                select(column)
                .where(StageEntry.funnel == self.funnel.slug, StageEntry.stage == stage, column.is_not(None), self._in_period(StageEntry.cohort_at))
                .order_by(column)
            )
            if group is not None:
                query = query.where(StageEntry.channel.is_(None) if group[0] is None else StageEntry.channel == group[0])
            values: dict[int, float] = {}
            for p in _PS:
                low = int(p * (count - 1))
                for rank, d in enumerate(self.session.scalars(query.offset(low).limit(2)), start=low + 1):
                    values[rank] = float(d)
            if len(values) < len(math.percentile_ranks(count, _PS)):
                raise RuntimeError(f"the report's tallies count {count} times for stage {stage!r} but fewer stage entries have one")
            found[bucket] = (math.percentile_from_ranks(values, count, 0.5), math.percentile_from_ranks(values, count, 0.9))
        return found

    # Figures from the stored facts ---------------------------------------------------

    def _figures(self, *, grouped: bool, periodic: bool) -> _Figures:
        figures = _Figures()
        self._count_stages(figures, grouped, periodic)
        figures.times = self._times(grouped=grouped, periodic=periodic)
        self._count_revenue(figures, grouped, periodic)
        self._count_steps(figures, grouped, periodic)
        return figures

    def _stage_moment(self) -> Any:
        return StageEntry.cohort_at if self.q.mode == "cohort" else StageEntry.entered_at

    def _count_stages(self, figures: _Figures, grouped: bool, periodic: bool) -> None:
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

    def _seconds(self, later: Any, earlier: Any) -> Any:
        if self.pg:
            return func.extract("epoch", later - earlier)
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0

    def _times(self, *, grouped: bool, periodic: bool) -> dict[Key, dict[str, tuple[float | None, float | None]]]:
        # Time to reach a stage from the one before it, for leads who went through that one
        # (a lead that jumped over the previous stage has no such time), and the funnel's
        # length: first stage to last, for leads who entered the last.
        moment = self._stage_moment()
        step = (
            select(StageEntry.stage.label("bucket"), StageEntry.since_previous_s.label("d"))
            .where(StageEntry.funnel == self.funnel.slug, StageEntry.since_previous_s.is_not(None), self._in_period(moment))
        )
        length = (
            select(literal(_LENGTH).label("bucket"), StageEntry.since_first_s.label("d"))
            .where(
                StageEntry.funnel == self.funnel.slug, StageEntry.stage == self.stages[-1], StageEntry.since_first_s.is_not(None),
                self._in_period(moment),
            )
        )
        parts = []
        for stmt in (step, length) if len(self.stages) > 1 else (step,):
            stmt, _ = self._keyed(stmt, StageEntry, moment, grouped=grouped, periodic=periodic)
            parts.append(stmt.group_by(None))
        durations = union_all(*parts).subquery("durations")
        key_columns = [column for column in durations.c if column.name.startswith("k")]
        found: dict[Key, dict[str, tuple[float | None, float | None]]] = defaultdict(dict)
        for key, bucket, values in self._percentiles(durations, key_columns):
            found[key][bucket] = values
        return found

    def _percentiles(self, durations: Any, keys: list[Any]) -> Iterable[tuple[Key, str, tuple[float | None, float | None]]]:
        """Median and 90th percentile of `durations.d` per key and bucket.

        PostgreSQL: `percentile_cont`. SQLite: number the durations in order within
        each group, keep only the rows at the ranks the two percentiles fall between,
        and interpolate those in Python exactly as `percentile_cont` does.
        """
        parts = [*keys, durations.c.bucket]
        if self.pg:
            stmt = select(
                *parts, *(func.percentile_cont(p).within_group(durations.c.d) for p in _PS)
            ).group_by(*parts)
            for row in self.session.execute(stmt):
                yield tuple(row[: len(keys)]), row[len(keys)], (row[-2], row[-1])
            return
        ranked = select(
            *parts, durations.c.d,
            func.row_number().over(partition_by=parts, order_by=durations.c.d).label("rank"),
            func.count().over(partition_by=parts).label("n"),
        ).subquery("ranked")
        wanted = []
        for p in _PS:
            low = cast(p * (ranked.c.n - 1), Integer) + 1
            wanted += [ranked.c.rank == low, ranked.c.rank == low + 1]
        rows = self.session.execute(select(ranked).where(or_(*wanted)))
        gathered: dict[tuple[Key, str], tuple[int, dict[int, float]]] = {}
        for row in rows:
            key = tuple(row[: len(keys)])
            bucket = row[len(keys)]
            _, values = gathered.setdefault((key, bucket), (int(row.n), {}))
            values[int(row.rank)] = float(row.d)
        for (key, bucket), (count, values) in gathered.items():
            yield key, bucket, (math.percentile_from_ranks(values, count, 0.5), math.percentile_from_ranks(values, count, 0.9))

    def _purchases(self) -> Any:
        return aliased(Event, name="p")

    def _count_revenue(self, figures: _Figures, grouped: bool, periodic: bool) -> None:
        # Revenue, orders and paying customers per currency: purchases by the report's leads
        # made after they entered the funnel.
        p = self._purchases()
        currency = func.coalesce(p.properties["currency"].as_string(), "")
        stmt = select(
            currency.label("currency"), func.sum(amount_of(self.session, p)).label("total"), func.count().label("orders"),
            func.count(p.lead_id.distinct()).label("customers"),
        ).select_from(p).where(p.type == "purchase").group_by(currency)
        stmt, moment = self._joined_first(stmt, p, p.at)
        stmt, keys = self._keyed(stmt, p, moment, grouped=grouped, periodic=periodic, product=p.properties["product"].as_string())
        for row in self.session.execute(stmt):
            key = tuple(row._mapping[k.name] for k in keys)
            figures.revenue[key][row.currency] = [float(row.total or 0), int(row.orders), int(row.customers), 0.0, 0, 0]
        # Refunds by the same leads, counted by their own moment like a purchase: whether or not
        # the order they give money back for was ever recorded.
        r = self._refunds()
        refund_currency = currency_of(r)
        stmt = select(
            refund_currency.label("currency"), func.sum(amount_of(self.session, r)).label("total"), func.count().label("refunds"),
            func.count(order_key(r).distinct()).label("orders"),
        ).select_from(r).where(r.type == "refund").group_by(refund_currency)
        stmt, moment = self._joined_first(stmt, r, r.at)
        stmt, keys = self._keyed(stmt, r, moment, grouped=grouped, periodic=periodic, product=r.properties["product"].as_string())
        for row in self.session.execute(stmt):
            key = tuple(row._mapping[k.name] for k in keys)
            into = figures.revenue[key].setdefault(row.currency, [0.0, 0, 0, 0.0, 0, 0])
            into[3:] = [float(row.total or 0), int(row.refunds), int(row.orders)]

    def _refunds(self) -> Any:
        return aliased(Event, name="r")

    def _unmatched_refunds(self) -> list[dict[str, Any]]:
        """The report's refunds of orders never recorded (no purchase of the lead has that
        `order_id`): they count against the revenue all the same, and are listed here."""
        r, p = self._refunds(), self._purchases()
        stmt = (
            select(r.id, r.lead_id, r.at, order_of(r).label("order_id"), amount_of(self.session, r).label("amount"), currency_of(r).label("currency"))
            .select_from(r)
            .where(r.type == "refund", ~select(p.id).where(p.type == "purchase", refund_of(r, p)).exists())
            .order_by(r.at, r.id)
        )
        stmt, _ = self._joined_first(stmt, r, r.at)
        return [
            {
                "lead_id": row.lead_id, "order_id": None if row.order_id is None else str(row.order_id), "at": row.at.astimezone(UTC).isoformat(),
                "amount": math.money(float(row.amount or 0)), "currency": row.currency or None,
            }
            for row in self.session.execute(stmt)
        ]

    def _sent(self, columns: Iterable[Any], grouped: bool, periodic: bool, join: Callable[[Select[Any]], Select[Any]] | None = None) -> Any:
        """Emails of this funnel that were sent to the report's leads, with `columns` per step."""
        d = Delivery
        stmt = select(d.stage, d.step_id, *columns).where(d.flow == self.funnel.slug, d.kind == "email", d.status == "sent")
        if join is not None:
            stmt = join(stmt)
        stmt = stmt.group_by(d.stage, d.step_id)
        if self.q.mode == "cohort":
            stmt, moment = self._joined_first(stmt, d, d.sent_at)
        else:
            stmt, moment = stmt.where(self._in_period(d.sent_at)), d.sent_at
        stmt, keys = self._keyed(stmt, d, moment, grouped=grouped, periodic=periodic)
        for row in self.session.execute(stmt):
            yield tuple(row._mapping[k.name] for k in keys), (row.stage, row.step_id), row

    def _count_steps(self, figures: _Figures, grouped: bool, periodic: bool) -> None:
        # Sent, opened and clicked by people (bots never set opened_at/clicked_at), the
        # unsubscribes made from each email, and purchases within 7 days of it with their
        # amount and the refunds of those purchases (revenue_7d is net).
        d = Delivery
        for key, step, row in self._sent([func.count().label("sent"), func.count(d.opened_at).label("opened"), func.count(d.clicked_at).label("clicked")], grouped, periodic):
            figures.steps[key][step] = [int(row.sent), int(row.opened), int(row.clicked), 0, 0, 0.0, 0.0]
        u, p, r = aliased(Event, name="u"), self._purchases(), self._refunds()
        after = and_(p.lead_id == d.lead_id, p.type == "purchase", p.at >= d.sent_at, before(self.session, p.at, d.sent_at, PURCHASE_WINDOW))
        followed: list[tuple[list[int], list[Any], Callable[[Select[Any]], Select[Any]]]] = [
            ([3], [func.count()], lambda stmt: stmt.join_from(d, u, and_(u.lead_id == d.lead_id, u.type == "unsubscribed", u.properties["delivery"].as_integer() == d.id))),
            ([4, 5], [func.count(), func.sum(amount_of(self.session, p))], lambda stmt: stmt.join_from(d, p, after)),
            ([6], [func.sum(amount_of(self.session, r))], lambda stmt: stmt.join_from(d, p, after).join(r, refund_of(r, p))),
        ]
        for indexes, columns, join in followed:
            for key, step, row in self._sent([column.label(f"f{index}") for index, column in zip(indexes, columns, strict=True)], grouped, periodic, join):
                into = figures.steps[key].setdefault(step, [0, 0, 0, 0, 0, 0.0, 0.0])
                for index in indexes:
                    into[index] = row._mapping[f"f{index}"] or 0

    # Holdout and variants -------------------------------------------------------------

    def _holdout(self) -> dict[str, Any] | None:
        # Per holdout group (treated / held_out), how many of the period's cohort reached each stage:
        # from the tallies (UTC days), or in another zone from the stage entries.
        t, a, e = CohortTally, Assignment, StageEntry
        if self.zone == "UTC":
            stmt = (
                select(t.detail, t.stage, func.sum(t.n))
                .where(t.funnel == self.funnel.slug, t.figure == "holdout", t.cohort_day >= self.q.start, t.cohort_day <= self.q.end)
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
        if not counts:
            return None
        treated, held = counts.get("treated", {}), counts.get("held_out", {})
        first = self.stages[0]
        return {
            "treated": treated.get(first, 0),
            "held_out": held.get(first, 0),
            "interval": "newcombe",
            "stages": [
                {"stage": stage, **math.lift_json(math.newcombe_lift(treated.get(stage, 0), treated.get(first, 0), held.get(stage, 0), held.get(first, 0)))}
                for stage in self.stages[1:]
            ],
        }

    def _variants(self) -> list[dict[str, Any]]:
        # A/B: per variant of each split `send` step, the cohort's leads who got that pick and
        # how many of them went on to the stage after the step's.
        steps = {
            step.id: (position, stage.name, [v.template for v in step.action.variants])
            for position, stage in enumerate(self.funnel.stages) for step in stage.steps
            if isinstance(step.action, Send) and step.action.variants and position + 1 < len(self.stages)
        }
        if not steps:
            return []
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
        found = {(name, value): (int(leads), int(converted)) for name, value, leads, converted in self.session.execute(stmt)}
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

    # Spend and attribution ------------------------------------------------------------

    def _spend(self, figures: _Figures, key: Key) -> list[dict[str, Any]] | None:
        """Cost figures per currency of spend: for the whole report, or for one channel's group."""
        stmt = (
            select(Spend.currency, func.sum(Spend.amount))
            .where(Spend.day >= self.q.start, Spend.day <= self.q.end)
            .group_by(Spend.currency)
        )
        if key:
            stmt = stmt.where(Spend.channel == key[0])
        spent = {currency: float(amount) for currency, amount in self.session.execute(stmt)}
        if not spent:
            return None
        leads = figures.counts.get(key, {}).get(self.stages[0], [0, 0])[0]
        revenue = figures.revenue.get(key, {})
        customers = sum(int(values[2]) for values in revenue.values())
        net = {cur: math.net_revenue(values[0], values[3]) for cur, values in revenue.items()}
        return [
            {"currency": currency, **math.spend_figures(amount, leads, customers, net.get(currency, 0.0))}
            for currency, amount in sorted(spent.items())
        ]

    def _attribution(self, whole: _Figures) -> dict[str, Any]:
        """Net revenue shared out to channels and to emails under the asked model; each total is the net revenue.

        Channels: every source the lead was seen with (its subscriptions) before the
        purchase. Emails: every email of this funnel a person clicked within `window`
        before it. Each purchase is shared at its net amount (less the refunds of its
        order); revenue with no touch, and refunds of orders outside the report, are
        shown against `null`.
        """
        p, r = self._purchases(), self._refunds()
        currency = func.coalesce(p.properties["currency"].as_string(), "")
        refunded = select(func.coalesce(func.sum(amount_of(self.session, r)), 0.0)).where(refund_of(r, p)).scalar_subquery()
        net = (amount_of(self.session, p) - refunded).label("amount")
        purchases = select(p.id.label("pid"), p.lead_id, p.at, net, currency.label("currency")).where(p.type == "purchase")
        purchases, _ = self._joined_first(purchases, p, p.at)
        bought = purchases.subquery("bought")
        totals = {cur: math.net_revenue(figures[0], figures[3]) for cur, figures in whole.revenue.get((), {}).items()}

        s = aliased(Event, name="s")
        channel = func.coalesce(s.properties["source"]["channel"].as_string(), s.properties["source"]["utm_source"].as_string())
        sources = select(s.lead_id, s.at, s.id, channel.label("label")).where(s.type == "subscribed").subquery("sources")
        channels = self._attribute(bought, sources, sources.c.label.is_not(None))
        d = Delivery
        clicks = (
            select(d.lead_id, d.clicked_at.label("at"), d.id, (d.stage + literal("/") + d.step_id).label("label"))
            .where(d.flow == self.funnel.slug, d.clicked_at.is_not(None))
            .subquery("clicks")
        )
        window = and_(before(self.session, bought.c.at, clicks.c.at, self.q.window))
        emails = self._attribute(bought, clicks, window)

        def listing(shares: dict[tuple[str | None, str], float], name: str) -> list[dict[str, Any]]:
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

        return {
            "model": self.q.attribution, "window": self.q.window_text,
            "channels": listing(channels, "channel"), "emails": listing(emails, "step"),
        }

    def _attribute(self, bought: Any, touches: Any, condition: ColumnElement[bool]) -> dict[tuple[str | None, str], float]:
        """Each purchase's revenue shared among its touches (rows of `touches` at or before it)."""
        model = self.q.attribution or "last"
        joined = (
            select(
                bought.c.pid, bought.c.amount, bought.c.currency, touches.c.label,
                self._seconds(bought.c.at, touches.c.at).label("age"),
                func.row_number().over(partition_by=bought.c.pid, order_by=(touches.c.at, touches.c.id)).label("rank"),
                func.count().over(partition_by=bought.c.pid).label("n"),
            )
            .join(touches, and_(touches.c.lead_id == bought.c.lead_id, touches.c.at <= bought.c.at))
            .where(condition)
            .subquery("touched")
        )
        shares: dict[tuple[str | None, str], float] = defaultdict(float)
        if model == "time_decay":
            # exp(-ln 2 · age / half-life), normalized per purchase: math.decay_weight in SQL.
            weight = func.exp(-0.6931471805599453 * joined.c.age / math.TIME_DECAY_HALF_LIFE_S)
            weighted = select(
                joined.c.label, joined.c.currency, joined.c.amount, weight.label("w"),
                func.sum(weight).over(partition_by=joined.c.pid).label("total_w"),
            ).subquery("weighted")
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
