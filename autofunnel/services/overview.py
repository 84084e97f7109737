"""The admin's home: every flow with its last 30 days at a glance.

A funnel's figures are the funnel report's own (cohort mode, per day), so the
home page and `GET /api/v1/reports/<funnel>` cannot disagree; a sequence has no
report, so its starts per day are counted from its enrollments. The home page
shows no times and no refunds list, so it asks the report for neither: its per-day
times alone took 5.4 s at a million leads on SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import func, select, text

from autofunnel.domain.model import Funnel
from autofunnel.services.report import DEFAULT_DAYS, Shown, day_start, funnel_report, parse_report_query
from autofunnel.services.runtime import Runtime
from autofunnel.store.models import SEQUENCE_RUNS, Enrollment
from autofunnel.store.queries import is_postgres
from autofunnel.store.report_queries import period_start


COUNTS_ONLY = Shown(times=False, period_times=False, unmatched_refunds=False)


@dataclass(frozen=True)
class FlowSummary:
    slug: str
    title: str
    kind: str
    """"funnel" or "sequence"."""
    entered: int
    """Leads that entered (a funnel's first stage, or a sequence run) in the period."""
    daily: tuple[int, ...]
    """Entries per day, oldest first, one per day of the period."""
    overall_conversion: float | None
    revenue: dict[str, Any] | None
    """The report's `revenue` (largest currency) for a funnel; None for a sequence."""


def flow_summaries(rt: Runtime, today: date, days: int = DEFAULT_DAYS) -> list[FlowSummary]:
    """Every flow of the project, funnels first, each with the period's entries and results."""
    start = today - timedelta(days=days - 1)
    summaries = []
    for flow in sorted(rt.project.flows.values(), key=lambda f: (f.kind != "funnel", f.slug)):
        if isinstance(flow, Funnel):
            query = parse_report_query(flow.slug, {"from": start.isoformat(), "to": today.isoformat(), "interval": "day"}, today)
            report = funnel_report(rt, query, shown=COUNTS_ONLY)
            per_day = {row["period"]: row["stages"][0]["reached"] for row in report.get("periods", [])}
            summaries.append(FlowSummary(
                flow.slug, flow.title, "funnel", report["stages"][0]["reached"] if report["stages"] else 0,
                _series(per_day, start, days), report["overall_conversion"], report["revenue"],
            ))
        else:
            per_day = _sequence_starts(rt, flow.slug, start, today)
            summaries.append(FlowSummary(flow.slug, flow.title, "sequence", sum(per_day.values()), _series(per_day, start, days), None, None))
    return summaries


def _series(per_day: dict[str, int], start: date, days: int) -> tuple[int, ...]:
    return tuple(per_day.get((start + timedelta(days=n)).isoformat(), 0) for n in range(days))


def _sequence_starts(rt: Runtime, slug: str, start: date, end: date) -> dict[str, int]:
    begin, stop = day_start(start, rt.settings.timezone), day_start(end + timedelta(days=1), rt.settings.timezone)
    with rt.db.read() as session:
        day = period_start(Enrollment.entered_at, "day", pg=is_postgres(session), zone=rt.settings.timezone)
        rows = session.execute(
            select(day, func.count())
            .where(Enrollment.flow == slug, text(SEQUENCE_RUNS), Enrollment.entered_at >= begin, Enrollment.entered_at < stop)
            .group_by(day)
        ).all()
    return {str(d): int(n) for d, n in rows}
