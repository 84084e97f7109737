"""Time of each kind of leads-list query (and the flow map) over a filled database, milliseconds.

    python bench/gen_report_data.py --leads 100000 --database-url sqlite:////tmp/af-report-100k.db
    python bench/bench_lead_search.py --database-url sqlite:////tmp/af-report-100k.db

The generator writes leads, stage entries and deliveries but no first names,
tags or enrollments; this script adds them once (marked by the enrollments it
finds): a first name `NameN` for every lead (N = id mod 5,000: 20 leads a name
per 100,000), the tag `vip` on 1 % of leads and `rare` on 0.01 %, and one active
enrollment per lead in the furthest yoga stage it reached, on one of that
stage's steps (lead id mod 3). Each query runs once to warm the caches, then
`--repeat` times through the service (`find_leads`, `flow_map`); the median
is printed with the rows found. The target is 100 ms a query at 1,000,000 leads.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from common import history_runtime
from sqlalchemy import func, select, text

from autofunnel.services.flow_map import flow_map
from autofunnel.services.lead_search import LeadFilter, find_leads
from autofunnel.services.leads import lead_view
from autofunnel.services.runtime import Runtime
from autofunnel.store.db import backend_name
from autofunnel.store.models import Enrollment, Lead

STEPS = {
    "lead": ("wait-after-welcome", "wait-after-tripwire-offer", "wait-until-tripwire"),
    "tripwire": ("wait-after-thanks-mini", "wait-event-purchase", "core-offer"),
    "customer": ("wait-after-welcome-core", "upsell-offer", "welcome-core"),
}


def fill(rt: Runtime) -> None:
    """First names, tags and active enrollments, in a few statements, unless already there."""
    with rt.db.transaction() as session:
        if session.scalar(select(func.count()).select_from(Enrollment)):
            return
        pg = backend_name(rt.settings.resolved_database_url) == "postgresql"
        cast = "::jsonb" if pg else ""
        session.execute(text("UPDATE leads SET first_name = 'Name' || CAST(id % 5000 AS TEXT)"))
        session.execute(text(f"UPDATE leads SET tags = '[\"vip\"]'{cast} WHERE id % 100 = 0"))
        session.execute(text(f"UPDATE leads SET tags = '[\"rare\"]'{cast} WHERE id % 10000 = 7"))
        cases = " ".join(
            f"WHEN s.stage = '{stage}' AND s.lead_id % 3 = {index} THEN '{step}'"
            for stage, steps in STEPS.items() for index, step in enumerate(steps)
        )
        empty_object, empty_list = ("'{}'::jsonb", "'[]'::jsonb") if pg else ("'{}'", "'[]'")
        session.execute(text(f"""
            INSERT INTO enrollments (lead_id, flow, kind, stage, run, step_id, status, due_at, visits, history, entered_at)
            SELECT s.lead_id, 'yoga', 'funnel', s.stage, 1, CASE {cases} END, 'active', s.entered_at, {empty_object}, {empty_list}, s.entered_at
            FROM stage_entries s
            WHERE s.funnel = 'yoga' AND s.stage IN ('lead', 'tripwire', 'customer') AND NOT s.skipped
              AND NOT EXISTS (SELECT 1 FROM stage_entries later WHERE later.lead_id = s.lead_id AND later.funnel = 'yoga' AND later.position > s.position)
        """))
    with rt.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # What autovacuum does soon after a load: statistics, and on PostgreSQL the visibility
        # map that lets the counts of waiting leads read the index alone.
        connection.execute(text("VACUUM ANALYZE" if pg else "ANALYZE"))


def timed(work: Callable[[], Any], repeat: int) -> tuple[float, float, float, Any]:
    result = work()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times), max(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rt = history_runtime(args.database_url, "af-lead-search-bench-")
    fill(rt)
    with rt.db.read() as session:
        leads = session.scalar(select(func.count()).select_from(Lead)) or 0
        top = session.scalar(select(func.max(Lead.id))) or 1
    middle = top // 2
    today = rt.clock.now().date()

    def page(**wanted: Any) -> Callable[[], Any]:
        return lambda: find_leads(rt, LeadFilter(**wanted))

    queries: list[tuple[str, Callable[[], Any]]] = [
        ("first page, no filter", page()),
        ("a page half way down (keyset)", page(before_id=middle)),
        ("email prefix, common (lead1)", page(search="lead1")),
        ("email prefix, one lead", page(search=f"lead{middle}@bench.example")),
        ("first name, 20 per 100k (name42)", page(search="name42")),
        ("tag, 1 % (vip)", page(search="vip")),
        ("tag, 0.01 % (rare)", page(search="rare")),
        ("text matching nothing", page(search="nosuchthing")),
        ("status, common (active)", page(status="active")),
        ("status, rare (unsubscribed)", page(status="unsubscribed")),
        ("status matching nothing (erased)", page(status="erased")),
        ("funnel", page(funnel="yoga")),
        ("funnel + stage, common (lead)", page(funnel="yoga", stage="lead")),
        ("funnel + stage, rare (vip)", page(funnel="yoga", stage="vip")),
        ("waiting on a step, common", page(funnel="yoga", step="wait-after-welcome")),
        ("waiting on a step, rarer (upsell-offer)", page(funnel="yoga", step="upsell-offer")),
        ("stage + status (tripwire, unsubscribed)", page(funnel="yoga", stage="tripwire", status="unsubscribed")),
        ("search + stage (lead1, customer)", page(search="lead1", funnel="yoga", stage="customer")),
        ("next page of a stage (keyset)", page(funnel="yoga", stage="lead", before_id=middle)),
        ("flow map (yoga, last 30 days)", lambda: flow_map(rt, "yoga", today)),
        ("a lead's view (lead API data)", lambda: lead_view(rt, str(middle))),
    ]
    print(f"backend: {backend_name(args.database_url)}; leads: {leads:,}; median of {args.repeat} after one warm-up, ms")
    for name, work in queries:
        median, low, high, result = timed(work, args.repeat)
        rows = len(result.rows) if hasattr(result, "rows") else ""
        more = " +next" if getattr(result, "has_next", False) else ""
        print(f"{name:<42} {median:8.1f} ms   ({low:.1f}-{high:.1f}) {rows}{more}")
    rt.close()


if __name__ == "__main__":
    main()
