"""The funnel report (SPEC.md "Reports"): the request checked, one read transaction, the body assembled.

The aggregate queries are `store/report_queries.py`'s; the arithmetic and the
shape of each section are the domain's (`domain/report.py`, `domain/report_body.py`).

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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import text

from autofunnel.domain import report as math
from autofunnel.domain import report_body as shape
from autofunnel.domain.durations import DurationError, parse_duration
from autofunnel.domain.model import Funnel
from autofunnel.domain.report import ATTRIBUTION_WINDOW
from autofunnel.domain.report_body import ReportQuery
from autofunnel.errors import InvalidInputError
from autofunnel.services.runtime import Runtime
from autofunnel.services.tallies import splits_current, tallies_current
from autofunnel.store.queries import is_postgres
from autofunnel.store.report_queries import ReportQueries

MODES: Final = ("cohort", "calendar")
INTERVALS: Final = ("day", "week", "month")
GROUPINGS: Final = ("channel", "product", "segment", "region", "owner")
DEFAULT_DAYS: Final = 30
"""Without `from`/`to` the report covers the last 30 days, today included (the seller's today)."""
PARAMETERS: Final = ("from", "to", "mode", "by", "interval", "attribution", "window")
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Shown:
    """The costly parts of a report a caller shows; the API and the CLI show all of them.

    Per-period times are counted from the stored facts (seconds at a million leads), the
    others are read off indexes; a page that draws none of them asks for none. A part left
    out comes back null, never as a wrong figure.
    """

    times: bool = True
    """Median and p90 times to reach each stage, and the funnel length, of the whole report and its groups."""
    period_times: bool = True
    """The same per period (`interval`)."""
    unmatched_refunds: bool = True
    """The list of refunds of orders never recorded, and `unmatched_refunded`, their sum (left out:
    both null; their amounts count in the refunded and net revenue either way)."""


EVERYTHING: Final = Shown()


def seller_today(rt: Runtime) -> date:
    """Today in the seller's zone (`AUTOFUNNEL_TIMEZONE`): where a default period ends."""
    return rt.clock.now().astimezone(ZoneInfo(rt.settings.timezone)).date()


def day_start(day: date, zone: str) -> datetime:
    """The UTC moment the seller's day begins (midnight in `zone`, whatever its offset that day)."""
    return datetime.combine(day, time(0), ZoneInfo(zone)).astimezone(UTC)


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


FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(9000, 12, 31)
"""The days a report's `from` and `to` may name."""


def _day(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInputError(f"{value!r} is not a date such as 2026-03-01", field=name) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        # A default period (30 days back), a week's start or a zone's midnight would fall off Python's calendar.
        raise InvalidInputError(f"{name} must be between {FIRST_DAY} and {LAST_DAY}, not {day}", field=name)
    return day


def funnel_report(rt: Runtime, query: ReportQuery, *, count_facts: bool = False, shown: Shown = EVERYTHING) -> dict[str, Any]:
    """The report for one funnel and period, as SPEC.md's JSON; one read transaction.

    `count_facts` counts every figure from the stored facts even where the running
    tallies have it: slower, and the yardstick the tests hold the tallies to. `shown`
    leaves out the costly parts a page does not draw (the API's answer has them all).
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
        zone = rt.settings.timezone
        queries = ReportQueries(session, funnel, query, start=day_start(query.start, zone), stop=day_start(query.end + timedelta(days=1), zone), zone=zone)
        # A report, whole, by channel, by owner, segment, region or product, or per period, in either mode,
        # is added up from the running tallies, which are kept per UTC day; the groups of other splits
        # (other lead fields), and every report in another zone than UTC, count the stored facts.
        tallied = not count_facts and zone == "UTC" and tallies_current(session)
        return _build(queries, funnel, query, tallied=tallied, splits=splits_current(session) if tallied else frozenset(), shown=shown)


def _build(queries: ReportQueries, funnel: Funnel, q: ReportQuery, *, tallied: bool, splits: frozenset[str], shown: Shown) -> dict[str, Any]:
    """The report's body: which figures to count and how, then each section shaped by the domain."""
    if tallied:
        whole, grouped, periods = queries.from_tallies(times=shown.times, period_times=shown.period_times, splits=splits)
        if q.by is not None and grouped is None:
            # A split by another lead field (or one the tallies are not kept by yet): its groups are counted from the facts.
            grouped = queries.figures(grouped=True, periodic=False, times=shown.times)
    else:
        grouped = queries.figures(grouped=True, periodic=False, times=shown.times) if q.by else None
        periods = queries.figures(grouped=False, periodic=True, times=shown.period_times) if q.interval else None
        # Counts and sums of the whole report are the sums over a slicing that puts each lead
        # in exactly one slice: groups of a lead attribute, or cohort periods. Only the
        # percentiles need a query of their own.
        partition = grouped if grouped is not None and q.by != "product" else periods if q.mode == "cohort" else None
        if partition is not None:
            whole = partition.rolled_up()
            if shown.times:
                whole.times = queries.times(grouped=False, periodic=False)
        else:
            whole = queries.figures(grouped=False, periodic=False, times=shown.times)
    unmatched = [
        shape.unmatched_refund(row.lead_id, row.order_id, row.at, row.amount, row.currency) for row in queries.unmatched_refunds()
    ] if shown.unmatched_refunds and any(figures[4] for figures in whole.revenue.get((), {}).values()) else []
    stages = [stage.name for stage in funnel.stages]
    order = shape.send_steps(funnel)
    split = shape.split_steps(funnel)
    body: dict[str, Any] = {
        "funnel": funnel.slug, "mode": q.mode, "from": q.start.isoformat(), "to": q.end.isoformat(),
        "by": q.by, "interval": q.interval,
        **shape.section(whole, (), stages, order, unmatched),
        "unmatched_refunds": unmatched if shown.unmatched_refunds else None,
        "holdout": shape.holdout(queries.holdout_counts(), stages),
        "variants": shape.variant_rows(split, queries.variant_counts(split)) if split else [],
        "spend": shape.spend_rows(queries.spent(()), whole, (), stages[0]),
    }
    if not shown.unmatched_refunds:
        for row in [body["revenue"], *body["revenue_by_currency"]]:
            row["unmatched_refunded"] = None
    if q.attribution:
        # The tallies keep the shares of the default window; another window counts the facts.
        channels, emails = queries.tallied_attribution() if tallied and q.window == ATTRIBUTION_WINDOW else queries.attribution_shares()
        totals = shape.net_by_currency(whole.revenue.get((), {}))
        body["attribution"] = {
            "model": q.attribution, "window": q.window_text,
            "channels": shape.attribution_rows(channels, totals, "channel"), "emails": shape.attribution_rows(emails, totals, "step"),
        }
    if grouped is not None:
        body["groups"] = [
            {
                "by": q.by, "value": key[0], **shape.section(grouped, key, stages, order),
                **({"spend": shape.spend_rows(queries.spent(key), grouped, key, stages[0])} if q.by == "channel" else {}),
            }
            for key in grouped.slices()
        ]
    if periods is not None:
        body["periods"] = [{"period": key[0], **shape.section(periods, key, stages, order)} for key in periods.slices()]
    return body
