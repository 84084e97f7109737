"""CPU an idle scheduler costs with 1,000,000 enrollments waiting far in the future.

    python bench/bench_scheduler_idle.py                          # PostgreSQL + Redis, 1M waiting, 60 s x 3
    python bench/bench_scheduler_idle.py --database-url sqlite --waiting 1000000   # SQLite + the folder broker
    python bench/bench_scheduler_idle.py --waiting 100000 --seconds 30 --repeat 2

Fills `--waiting` leads, each with an enrollment due in a year (written like
`subscribe` writes them), then starts `autofunnel scheduler` (a pass every
second: tick, sweep, queue depth) `--repeat` times. After it logged its start
and `--settle` more seconds, its CPU time (utime + stime from /proc) is read
before and after `--seconds`: printed as % of one core (target < 1 %). Also
printed: the CPU of the PostgreSQL backends serving it and of the private
redis-server it polls, which the scheduler's passes cost too.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sending import (
    PG_URL,
    SECRET,
    Processes,
    autofunnel_env,
    cpu_seconds,
    fill_due,
    load,
    median,
    processes,
    sending_project,
    start_redis,
    stop_signal_kills_group,
    wait_for_log,
)
from sqlalchemy import text

from autofunnel.store.db import Database


def backend_pids(db: Database) -> list[int]:
    """PostgreSQL server processes of this database's clients, except the one asking."""
    with db.engine.connect() as connection:
        return list(connection.scalars(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )))


def idle_run(group: Processes, project: Path, db: Database, url: str, redis_url: str | None, seconds: float,
             settle: float, number: int) -> dict[str, float]:
    """% of one core for the scheduler, its PostgreSQL backends and Redis over `seconds` of one run."""
    settings = {"database_url": url, "secret_key": SECRET, "smtp_url": "smtp://127.0.0.1:9"}
    if redis_url:
        settings["broker_url"] = redis_url
    name = f"scheduler{number}"
    scheduler = group.autofunnel(name, ["scheduler"], autofunnel_env(project, **settings))
    wait_for_log(group, name, "scheduler: a pass every", 60)
    time.sleep(settle)
    watched = {"scheduler": [scheduler.pid]}
    if db.backend == "postgresql":
        watched["postgres backends"] = backend_pids(db)
    if redis_url:
        watched["redis-server"] = [group.started["redis"].pid]
    before = {what: sum(cpu_seconds(pid) for pid in pids) for what, pids in watched.items()}
    started = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - started
    after = {what: sum(cpu_seconds(pid) for pid in pids) for what, pids in watched.items()}
    group.stop_one(name)
    return {what: (after[what] - before[what]) / elapsed * 100 for what in watched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=PG_URL, help="a PostgreSQL URL, or 'sqlite' for a fresh SQLite file")
    parser.add_argument("--waiting", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    stop_signal_kills_group()
    work, project, url = sending_project("af-idle-", None if args.database_url == "sqlite" else args.database_url)
    db = Database.from_url(url)
    far = datetime.now(UTC) + timedelta(days=365)
    started = time.perf_counter()
    fill_due(db, project, args.waiting, lambda i: far)
    if db.backend == "postgresql":
        with db.engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    print(f"{args.waiting} waiting enrollments on {db.backend} (filled in {time.perf_counter() - started:.0f} s);"
          f" scheduler measured {args.seconds:.0f} s x {args.repeat}   {load()}", flush=True)
    runs: list[dict[str, float]] = []
    with processes(work) as group:
        redis_url = start_redis(group) if db.backend == "postgresql" else None
        for number in range(args.repeat):
            runs.append(idle_run(group, project, db, url, redis_url, args.seconds, args.settle, number))
            print("  " + "   ".join(f"{what} {pct:.2f} %" for what, pct in runs[-1].items()) + f"   {load()}", flush=True)
        problems = group.log_problems()
    db.dispose()
    scheduler = median([run["scheduler"] for run in runs])
    print(f"median scheduler CPU: {scheduler:.2f} % of one core (target < 1 %: {'met' if scheduler < 1 else 'missed'});"
          + "".join(f" {what} {median([run[what] for run in runs]):.2f} %" for what in runs[0] if what != "scheduler")
          + f"; log problems: {problems or 'none'}")


if __name__ == "__main__":
    main()
