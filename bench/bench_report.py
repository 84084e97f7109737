"""The funnel report over a filled database: seconds per report and the process's peak memory.

    python bench/gen_report_data.py --leads 1000000 --database-url sqlite:////tmp/af-report-1m.db
    python bench/bench_report.py --database-url sqlite:////tmp/af-report-1m.db
    python bench/bench_report.py --database-url postgresql://autofunnel:autofunnel@127.0.0.1/autofunnel_bench_reports

Runs in its own process (the generator's memory is not counted), through the
same service the API and the CLI call, over the generator's 90 days: the full
cohort report, the same `by=channel`, and a few other slicings for reference.
`--matrix` prints instead every `mode` × `by` × `interval` and every attribution model over
the last `--days` days. Each is run once to warm the caches, then `--repeat` times; the median is
printed with its ratio to the plain cohort report, and last the peak resident
memory of the whole process (`getrusage`), which includes Python, SQLAlchemy
and the driver.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from gen_report_data import EPOCH
from sqlalchemy import func, select

from autofunnel.clock import FixedClock
from autofunnel.config import load_settings
from autofunnel.services.report import funnel_report, parse_report_query
from autofunnel.services.runtime import Runtime
from autofunnel.services.starter import init_project
from autofunnel.store.db import backend_name
from autofunnel.store.models import Lead

CASES = (
    ("cohort", {}),
    ("cohort by=channel", {"by": "channel"}),
    ("cohort by=owner", {"by": "owner"}),
    ("cohort by=segment", {"by": "segment"}),
    ("calendar by=owner", {"mode": "calendar", "by": "owner"}),
    ("cohort by=product", {"by": "product"}),
    ("calendar by=product", {"mode": "calendar", "by": "product"}),
    ("cohort interval=week", {"interval": "week"}),
    ("cohort interval=day", {"interval": "day"}),
    ("calendar interval=day", {"mode": "calendar", "interval": "day"}),
    ("calendar interval=month", {"mode": "calendar", "interval": "month"}),
    ("cohort by=owner interval=week", {"by": "owner", "interval": "week"}),
    ("calendar by=channel interval=day", {"mode": "calendar", "by": "channel", "interval": "day"}),
    ("calendar", {"mode": "calendar"}),
    ("cohort attribution=linear", {"attribution": "linear"}),
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(name for name, _ in CASES), help="comma-separated names from the list above")
    parser.add_argument("--matrix", action="store_true", help="every mode × by × interval, and mode × attribution, instead of --cases")
    parser.add_argument("--days", type=int, default=90, help="the period of --matrix: the last DAYS days of the generated history")
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="af-report-bench-")) / "shop"
    init_project(project)
    settings = load_settings(project, environ={"AUTOFUNNEL_DATABASE_URL": args.database_url, "AUTOFUNNEL_SECRET_KEY": "bench-secret-0123456789"})
    rt = Runtime.open(settings, FixedClock(EPOCH))
    with rt.db.read() as session:
        leads = session.scalar(select(func.count()).select_from(Lead)) or 0
    print(f"backend: {backend_name(args.database_url)}; leads: {leads:,}; median of {args.repeat} after one warm-up")
    if args.matrix:
        print_matrix(rt, args.days, args.repeat)
        rt.close()
        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        return
    wanted = args.cases.split(",")
    base = None
    for name, extra in CASES:
        if name not in wanted:
            continue
        query = parse_report_query("yoga", {"from": "2026-01-01", "to": "2026-03-31", **extra}, EPOCH.date())
        funnel_report(rt, query)
        samples = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            report = funnel_report(rt, query)
            samples.append(time.perf_counter() - started)
        median = statistics.median(samples)
        base = base or median
        reached = [stage["reached"] for stage in report["stages"]]
        print(f"{name:<28} {median:7.3f} s  ×{median / base:4.2f}   runs {', '.join(f'{s:.3f}' for s in samples)}   reached {reached}")
        sys.stdout.flush()
    now = resident()
    rt.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS of this process: {peak_kb / 1024:.0f} MB; after the last report: {now}")


BYS = ("", "channel", "product", "segment", "region", "owner", "field:segment")
INTERVALS = ("", "day", "week", "month")


def timed(rt: Runtime, params: dict[str, str], repeat: int) -> float:
    """Median seconds of one report after a warm-up run."""
    query = parse_report_query("yoga", {key: value for key, value in params.items() if value}, EPOCH.date())
    funnel_report(rt, query)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        funnel_report(rt, query)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def print_matrix(rt: Runtime, days: int, repeat: int) -> None:
    """Seconds per report for every split and interval in both modes, then every attribution model."""
    end = date(2026, 3, 31)
    period = {"from": (end - timedelta(days=days - 1)).isoformat(), "to": end.isoformat()}
    print(f"period {period['from']} → {period['to']} ({days} days)")
    print(f"{'mode':<9} {'by':<14}" + "".join(f"{'interval=' + (i or 'none'):>16}" for i in INTERVALS))
    for mode in ("cohort", "calendar"):
        for by in BYS:
            cells = [timed(rt, {**period, "mode": mode, "by": by, "interval": interval}, repeat) for interval in INTERVALS]
            print(f"{mode:<9} {by or 'none':<14}" + "".join(f"{cell:>14.3f} s" for cell in cells))
            sys.stdout.flush()
    print(f"{'mode':<9} {'attribution':<14}{'seconds':>16}")
    for mode in ("cohort", "calendar"):
        for model in ("first", "last", "linear", "position", "time_decay"):
            print(f"{mode:<9} {model:<14}{timed(rt, {**period, 'mode': mode, 'attribution': model}, repeat):>14.3f} s")
            sys.stdout.flush()


def resident() -> str:
    """Anonymous (the process's own) and file-backed resident memory now: on SQLite the
    database file is memory-mapped (256 MB, see store/db.py) and its pages count as RSS."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    except OSError:
        return "unknown"
    return ", ".join(f"{name} {int(fields[name].split()[0]) / 1024:.0f} MB" for name in ("RssAnon", "RssFile") if name in fields)


if __name__ == "__main__":
    main()
