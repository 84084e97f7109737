"""Latency from due time to SMTP at a steady 100 due leads per second, PostgreSQL + Redis.

    python bench/bench_latency.py                                # 100/s for 40 s, 2 x 1 workers, 2 runs
    python bench/bench_latency.py --rate 100 --seconds 60 --layout 1x2 --repeat 1

Each run writes `rate x seconds` leads whose welcome is due one after the other,
`rate` per second, starting `--lead-time` seconds later (so the processes have
started when the first is due), then starts a private redis-server, a lean sink,
`autofunnel scheduler` and the workers. Once the sink has them all, each
email's latency is its delivery's `sent_at` (recorded right after the SMTP
server took it) minus the due time written for its lead. Printed: p50, p95, p99,
max and the share within 5 s (target: 95 % within 5 s), and the rate achieved.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from lean_smtp_sink import free_port, start_sink
from sending import (
    LAYOUTS,
    PG_URL,
    SECRET,
    autofunnel_env,
    fill_due,
    load,
    median,
    processes,
    sending_project,
    start_redis,
    stop_signal_kills_group,
    watch_sink,
)
from sqlalchemy import select, text

from autofunnel.store.db import Database
from autofunnel.store.models import Delivery


def latencies(rate: float, seconds: float, lead_time: float, layout: str) -> tuple[list[float], float]:
    """Seconds from due time to `sent_at` for every email of one run, and the emails/s of the run."""
    count = int(rate * seconds)
    work, project, url = sending_project("af-latency-", PG_URL)
    db = Database.from_url(url)
    first_due = datetime.now(UTC) + timedelta(seconds=lead_time)

    def due_at(lead_id: int) -> datetime:
        return first_due + timedelta(seconds=(lead_id - 1) / rate)

    fill_due(db, project, count, due_at)
    with db.engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    with processes(work) as group:
        port = free_port()
        group.adopt("sink", start_sink("lean", port))
        redis_url = start_redis(group)
        env = autofunnel_env(project, database_url=url, broker_url=redis_url, smtp_url=f"smtp://127.0.0.1:{port}", secret_key=SECRET)
        started = time.perf_counter()
        for number, arguments in enumerate(LAYOUTS[layout]):
            group.autofunnel(f"worker{number}", arguments, env)
        group.autofunnel("scheduler", ["scheduler"], env)
        watch_sink(group, port, count, started, timeout=lead_time + seconds + 600)
        time.sleep(2)
        problems = group.log_problems()
    with db.engine.connect() as connection:
        rows = [
            (lead_id, _aware(sent_at)) for lead_id, sent_at in
            connection.execute(select(Delivery.lead_id, Delivery.sent_at).where(Delivery.status == "sent")).all()
            if sent_at is not None
        ]
    db.dispose()
    if problems:
        print(f"    log problems: {problems} (logs in {work})")
    delays = sorted((sent_at - due_at(lead_id)).total_seconds() for lead_id, sent_at in rows)
    last_sent = max(sent_at for _, sent_at in rows)
    achieved = len(rows) / max((last_sent - first_due).total_seconds(), 1e-9)
    if len(rows) != count:
        print(f"    only {len(rows)} of {count} deliveries are sent")
    return delays, achieved


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return values[min(len(values) - 1, max(0, round(share * len(values)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="leads due per second")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--lead-time", type=float, default=15.0, help="seconds from the start of the processes to the first due lead")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="2x1")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    stop_signal_kills_group()
    print(f"{args.rate:.0f} due/s for {args.seconds:.0f} s, workers {args.layout}, PostgreSQL + Redis   {load()}", flush=True)
    p95s, within = [], []
    for _ in range(args.repeat):
        delays, achieved = latencies(args.rate, args.seconds, args.lead_time, args.layout)
        share = sum(1 for d in delays if d <= 5.0) / len(delays)
        p95s.append(percentile(delays, 0.95))
        within.append(share)
        print(f"  {len(delays)} emails: p50 {percentile(delays, 0.5):.2f} s  p95 {p95s[-1]:.2f} s  p99 {percentile(delays, 0.99):.2f} s"
              f"  max {delays[-1]:.2f} s  within 5 s {share:.1%}  sent at {achieved:.0f}/s   {load()}", flush=True)
    verdict = "met" if median(within) >= 0.95 else "missed"
    print(f"median of {args.repeat}: p95 {median(p95s):.2f} s, within 5 s {median(within):.1%} (target 95 %: {verdict})")


if __name__ == "__main__":
    main()
