"""The admin's home: each flow's last 30 days at a glance.

A funnel's figures are the report's own (`funnel_report`, the service behind
GET /api/v1/reports/<funnel>, asked per day), so home, the funnel page and the
API cannot disagree. A sequence has no report: its entries are counted from
its enrollments, per UTC day as the report counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select

from autofunnel.domain.model import Funnel
from autofunnel.services.report import DEFAULT_DAYS, funnel_report, parse_report_query
from autofunnel.services.runtime import Runtime
from autofunnel.store.models import Enrollment


@dataclass(frozen=True)
class FlowSummary:
    slug: str
    title: str
    kind: str
    """"funnel" or "sequence"."""
    entered: int
    daily: list[int]
    """Entries per day, oldest first, one per day of the period."""
    overall_conversion: float | None
    revenue: dict[str, Any] | None
    """The report's `revenue` (net of refunds); None for a sequence."""


@dataclass(frozen=True)
class Overview:
    start: date
    end: date
    flows: list[FlowSummary]


def overview(rt: Runtime, days: int = DEFAULT_DAYS) -> Overview:
    """Every funnel and sequence of the project over the last `days` days, today included (UTC)."""
    end = rt.clock.now().date()
    start = end - timedelta(days=days - 1)
    span = [start + timedelta(days=offset) for offset in range(days)]
    flows: list[FlowSummary] = []
    for slug, flow in sorted(rt.project.flows.items()):
        title = getattr(flow, "title", None) or slug
        if isinstance(flow, Funnel):
            query = parse_report_query(slug, {"from": start.isoformat(), "to": end.isoformat(), "interval": "day"}, end)
            report = funnel_report(rt, query)
            per_day = {period["period"]: period["stages"][0]["reached"] if period["stages"] else 0 for period in report.get("periods", [])}
            daily = [per_day.get(day.isoformat(), 0) for day in span]
            entered = report["stages"][0]["reached"] if report["stages"] else 0
            flows.append(FlowSummary(slug, title, "funnel", entered, daily, report["overall_conversion"], report["revenue"]))
        else:
            daily = _sequence_entries(rt, slug, span)
            flows.append(FlowSummary(slug, title, "sequence", sum(daily), daily, None, None))
    return Overview(start, end, flows)


def _sequence_entries(rt: Runtime, slug: str, span: list[date]) -> list[int]:
    low = datetime.combine(span[0], time(), UTC)
    high = datetime.combine(span[-1] + timedelta(days=1), time(), UTC)
    with rt.db.read() as session:
        rows = session.execute(
            select(func.date(Enrollment.entered_at), func.count())
            .where(Enrollment.flow == slug, Enrollment.entered_at >= low, Enrollment.entered_at < high)
            .group_by(func.date(Enrollment.entered_at))
        ).all()
    counts = {str(day)[:10]: count for day, count in rows}
    return [counts.get(day.isoformat(), 0) for day in span]
