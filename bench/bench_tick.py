"""Scheduler pass cost with many waiting enrollments.

    python bench/bench_tick.py                          # SQLite, 10k / 100k / 1M waiting
    python bench/bench_tick.py --database-url postgresql://autofunnel:autofunnel@127.0.0.1/autofunnel_bench
    python bench/bench_tick.py --sizes 10000,1000000 --due 1000

For each size it fills the database with that many leads, each with an
enrollment waiting far in the future (rows written directly with Core, fast),
then times: an empty pass (nothing due), and a pass that finds `--due` leads due
and runs the engine for them (emails are queued, not sent: SMTP is excluded).
Printed: median of several passes, and the ratio to the smallest size, which
should stay near 1 — a pass costs what is due, not every lead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select, text, update

from autofunnel.clock import FixedClock
from autofunnel.config import load_settings
from autofunnel.services.runtime import Runtime
from autofunnel.services.scheduler import tick
from autofunnel.store.db import Database, backend_name
from common import fresh_project
from autofunnel.store.models import Enrollment, Lead

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
FAR = NOW + timedelta(days=365)


def fill(db: Database, size: int, start: int) -> None:
    """Leads start..size-1 with an active enrollment in the yoga lead stage, waiting until FAR."""
    chunk = 20000
    with db.engine.begin() as connection:
        for low in range(start, size, chunk):
            high = min(size, low + chunk)
            connection.execute(insert(Lead), [
                {"id": i + 1, "email": f"lead{i}@bench.example", "fields": {}, "tags": [], "status": "active",
                 "created_at": NOW, "updated_at": NOW, "timezone": None}
                for i in range(low, high)
            ])
            connection.execute(insert(Enrollment), [
                {"lead_id": i + 1, "flow": "yoga", "kind": "funnel", "stage": "lead", "run": 1, "step_id": "wait-after-welcome",
                 "status": "active", "due_at": FAR, "waiting_for": {"kind": "time"}, "visits": {"welcome": 1}, "entered_at": NOW}
                for i in range(low, high)
            ])
        if db.backend == "postgresql":
            connection.execute(text("ANALYZE"))


def make_due(db: Database, count: int) -> None:
    with db.engine.begin() as connection:
        ids = connection.scalars(
            select(Enrollment.id).where(Enrollment.status == "active", Enrollment.due_at == FAR).order_by(Enrollment.id).limit(count)
        ).all()
        connection.execute(update(Enrollment).where(Enrollment.id.in_(ids)).values(due_at=NOW - timedelta(minutes=1)))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work, project, url = fresh_project("af-bench-", args.database_url)
    settings = load_settings(project, environ={"AUTOFUNNEL_DATABASE_URL": url, "AUTOFUNNEL_SECRET_KEY": "bench-secret-0123456789", "AUTOFUNNEL_SMTP_URL": f"file://{work}/outbox"})
    rt = Runtime.open(settings, FixedClock(NOW))
    print(f"backend: {backend_name(url)}; due per pass: {args.due}; median of {args.repeat}")
    print(f"{'waiting':>10} {'empty pass ms':>14} {'ratio':>6} {'pass with due ms':>17} {'ratio':>6} {'per due lead µs':>16}")
    base_empty = base_due = None
    filled = 0
    for size in sizes:
        t = time.perf_counter()
        fill(rt.db, size, filled)
        filled = size
        load_s = time.perf_counter() - t
        tick(rt, now=NOW)  # warm: caches, flow versions
        empty = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            report = tick(rt, now=NOW)
            empty.append(time.perf_counter() - t)
            assert report.enrollments == 0
        due = []
        for _ in range(args.repeat):
            make_due(rt.db, args.due)
            t = time.perf_counter()
            report = tick(rt, now=NOW)
            due.append(time.perf_counter() - t)
            assert report.enrollments == args.due, report.enrollments
        e, d = median_ms(empty), median_ms(due)
        base_empty = base_empty or e
        base_due = base_due or d
        with rt.db.read() as session:
            waiting = session.scalar(select(func.count()).select_from(Enrollment).where(Enrollment.status == "active"))
        print(f"{waiting:>10} {e:>14.2f} {e / base_empty:>6.2f} {d:>17.1f} {d / base_due:>6.2f} {d * 1000 / args.due:>16.0f}   (filled in {load_s:.0f} s)")
        sys.stdout.flush()
    rt.close()


if __name__ == "__main__":
    main()
