"""End-to-end sending: emails/s from due enrollments to an SMTP sink on loopback,
through the real processes; then where the time of one email goes.

    python bench/bench_send.py                                   # every system below, 20,000 emails, 2 runs each
    python bench/bench_send.py --leads 5000 --repeat 1           # quicker
    python bench/bench_send.py --systems pg:2x1:lean,pg:1x2:lean --breakdown 0
    python bench/bench_send.py --systems pg:2x1:lean --leads 100000 --repeat 1 --breakdown 0   # memory over 100k sends
    python bench/bench_send.py --systems none --breakdown 2000   # only the per-email breakdown and the Celery cost

Systems (`--systems`, comma-separated):
  pg:2x1:lean      PostgreSQL + Redis, `autofunnel scheduler` + 2 x `autofunnel worker --concurrency 1`, lean sink
  pg:1x2:lean      the same with one `autofunnel worker --concurrency 2`
  pg:2xdefault:lean  2 x `autofunnel worker` at their default concurrency (the number of cores), lean sink
  pg:2x1:aiosmtpd  2 x 1 workers into an aiosmtpd sink
  pg:1solo:lean    one `autofunnel worker --pool solo` (the worker `run` starts), to tell its memory from SQLite's and the folder broker's
  pgfolder:1solo:lean  PostgreSQL with the default folder broker, one solo worker (memory: the folder broker's share)
  run:lean         the default: `autofunnel run`, SQLite and the folder broker (no DATABASE_URL/BROKER_URL), lean sink

Each run: a fresh database with `--leads` leads due now (the yoga welcome), a
private redis-server, the sink in its own process, then the processes. Printed:
emails/s from the processes' start until the last email reached the sink
("from start", start-up included) and from the first email to the last
("steady"), the delivery statuses (all must be `sent`), ERROR lines in the logs,
and memory: RSS of every sending process (a worker's pool children; the worker
itself under `run`) at the first email, its peak and at the end, growth per
10,000 sends (least squares over the samples after the first 20 %), and Redis's
used_memory / used_memory_rss peak.

The breakdown runs `deliver()` in this process on `--breakdown` queued emails
(batches of 50, as the workers get them) against a lean sink, on PostgreSQL and
SQLite (and, as a diagnostic, PostgreSQL with synchronous_commit=off: the share of
the commits' wait for the disk), with timers wrapped around the batch's two statements (take the batch, read its
leads), the transaction that records one email's outcome and claims the next,
rendering, the MIME build and the SMTP send. The Celery cost is measured
apart: empty batches published to Redis, consumed by a worker; the worker's CPU
per task (pool parent + child) and the publisher's time per task.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lean_smtp_sink import free_port, sink_count, start_sink
from sending import (
    LAYOUTS,
    PG_URL,
    SECRET,
    SinkRun,
    autofunnel_env,
    children,
    cpu_seconds,
    delivery_statuses,
    fill_due,
    load,
    median,
    processes,
    redis_port,
    sending_project,
    settings_for,
    start_redis,
    stop_signal_kills_group,
    wait_for_log,
    wait_until,
    watch_sink,
)
from sqlalchemy import text

import autofunnel.services.delivery as delivery_module
import autofunnel.mail.compose as compose_module
from autofunnel.mail.transport import SmtpSession
from autofunnel.services.delivery import deliver
from autofunnel.services.dispatch import in_batches
from autofunnel.services.runtime import Runtime
from autofunnel.services.scheduler import tick
from autofunnel.store.db import Database

MB = 1024 * 1024


@dataclass
class RunResult:
    system: str
    leads: int
    from_start: float
    steady: float
    statuses: dict[str, int]
    received: int
    problems: dict[str, int]
    load: str
    sink: SinkRun


def run_system(system: str, leads: int, timeout: float) -> RunResult:
    """One end-to-end run of `system` (see the module docstring) on a fresh database."""
    shape, layout, sink_kind = (system.split(":") + ["", ""])[:3]
    sink_kind = sink_kind or layout
    work, project, url = sending_project("af-send-", PG_URL if shape in ("pg", "pgfolder") else None)
    if shape == "run":
        url = f"sqlite:///{project / 'autofunnel.db'}"
        from autofunnel.store.migrate import upgrade

        upgrade(url)
    db = Database.from_url(url)
    now = datetime.now(UTC)
    fill_due(db, project, leads, lambda i: now)
    if db.backend == "postgresql":
        with db.engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    with processes(work) as group:
        port = free_port()
        group.adopt("sink", start_sink(sink_kind, port))
        smtp_url = f"smtp://127.0.0.1:{port}"
        redis_url = start_redis(group) if shape == "pg" else None
        started = time.perf_counter()
        if shape in ("pg", "pgfolder"):
            env = autofunnel_env(project, database_url=url, smtp_url=smtp_url, secret_key=SECRET)
            if redis_url:
                env["AUTOFUNNEL_BROKER_URL"] = redis_url
            for number, arguments in enumerate(LAYOUTS[layout]):
                group.autofunnel(f"worker{number}", arguments, env)
            group.autofunnel("scheduler", ["scheduler"], env)
        else:
            env = autofunnel_env(project, smtp_url=smtp_url, secret_key=SECRET)
            group.autofunnel("run", ["run", "--port", str(free_port())], env)
        sink = watch_sink(group, port, leads, started, timeout=timeout, redis_url=redis_url)
        statuses = _settled_statuses(db, leads)
        received = sink_count(port)
        problems = group.log_problems()
    db.dispose()
    assert sink.done is not None and sink.first is not None
    return RunResult(system, leads, leads / (sink.done - started), (leads - 1) / max(sink.done - sink.first, 1e-9),
                     statuses, received, problems, load(), sink)


def _settled_statuses(db: Database, leads: int) -> dict[str, int]:
    """Delivery statuses once every finish transaction after the last SMTP answer has committed."""
    try:
        wait_until(lambda: delivery_statuses(db).get("sent", 0) >= leads, 15, "every delivery to be sent", every=0.2)
    except TimeoutError:
        pass
    return delivery_statuses(db)


def print_run(result: RunResult) -> None:
    ok = "all sent" if result.statuses == {"sent": result.leads} else f"NOT all sent: {result.statuses}"
    if result.received != result.leads:
        ok += f", but the sink received {result.received}"
    print(f"  {result.system:16} {result.from_start:7.0f}/s from start  {result.steady:7.0f}/s steady   {ok}"
          f"   log problems: {result.problems or 'none'}   {result.load}", flush=True)


def print_memory(result: RunResult) -> None:
    samples = [s for s in result.sink.samples if s.sent > 0] or result.sink.samples
    names = sorted({name for s in samples for name in s.rss})
    for name in names:
        points = [(s.sent, s.rss[name]) for s in samples if name in s.rss]
        values = [rss for _, rss in points]
        print(f"    RSS {name:18} first email {values[0] / MB:6.1f} MB  peak {max(values) / MB:6.1f} MB  end {values[-1] / MB:6.1f} MB"
              f"  growth {_growth_per_10k(points, result.leads) / MB:+.2f} MB per 10,000 sends")
    redis = [s.redis for s in result.sink.samples if s.redis]
    if redis:
        print(f"    Redis used_memory peak {max(r['used_memory'] for r in redis) / MB:.1f} MB,"
              f" used_memory_rss peak {max(r['used_memory_rss'] for r in redis) / MB:.1f} MB (target <= 100 MB)")


def _growth_per_10k(points: list[tuple[int, int]], total: int) -> float:
    """Slope of RSS over sends (least squares) after the first 20 % of sends, per 10,000 sends."""
    late = [(x, y) for x, y in points if x >= total * 0.2]
    if len(late) < 2:
        return float("nan")
    mean_x = sum(x for x, _ in late) / len(late)
    mean_y = sum(y for _, y in late) / len(late)
    spread = sum((x - mean_x) ** 2 for x, _ in late)
    return sum((x - mean_x) * (y - mean_y) for x, y in late) / spread * 10000 if spread else float("nan")


# where one email's time goes ------------------------------------------------------------------


class Timers:
    """Seconds and calls per label, filled by `wrapped` functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started

        return timed


@contextmanager
def patched(target: Any, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, replacement)
    try:
        yield
    finally:
        setattr(target, name, original)


def breakdown(database_url: str | None, emails: int, pgoptions: str | None = None) -> None:
    """Time per email of each part of `deliver()`, in this process, over `emails` queued deliveries.

    `pgoptions` (libpq's PGOPTIONS, e.g. synchronous_commit=off) is a diagnostic: how much
    of a PostgreSQL transaction is the commit's wait for the disk."""
    work, project, url = sending_project("af-parts-", database_url)
    with processes(work) as group, _environment("PGOPTIONS", pgoptions):
        port = free_port()
        group.adopt("sink", start_sink("lean", port))
        rt = Runtime.open(settings_for(project, url, f"smtp://127.0.0.1:{port}"))
        now = datetime.now(UTC)
        fill_due(rt.db, project, emails, lambda i: now)
        ids = tick(rt).queued
        timers = Timers()
        renderer = rt.renderer
        with (
            patched(delivery_module, "mark_taken", timers.wrap("batch: take + read leads (DB)", delivery_module.mark_taken)),
            patched(delivery_module, "read_leads", timers.wrap("batch: take + read leads (DB)", delivery_module.read_leads)),
            patched(delivery_module, "_claim", timers.wrap("record previous + claim (DB)", delivery_module._claim)),
            patched(delivery_module, "_record_alone", timers.wrap("record the batch's last (DB)", delivery_module._record_alone)),
            patched(delivery_module, "_compose", timers.wrap("compose (total)", delivery_module._compose)),
            patched(renderer, "render", timers.wrap("render (Jinja, CSS, text part)", renderer.render)),
            patched(compose_module, "build_message", timers.wrap("MIME build", compose_module.build_message)),
            patched(SmtpSession, "send", timers.wrap("SMTP send (incl. connect per batch)", SmtpSession.send)),
        ):
            started = time.perf_counter()
            for batch in in_batches(ids):
                deliver(rt, batch)
            total = time.perf_counter() - started
        statuses = delivery_statuses(rt.db)
        rt.close()
    _print_breakdown(rt.db.backend + (f" with PGOPTIONS={pgoptions!r}" if pgoptions else ""), len(ids), total, timers, statuses)


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _print_breakdown(backend: str, count: int, total: float, timers: Timers, statuses: dict[str, int]) -> None:
    parts = dict(timers.seconds)
    compose = parts.pop("compose (total)")
    parts["links, tracking, headers (rest of compose)"] = compose - parts["render (Jinja, CSS, text part)"] - parts["MIME build"]
    parts["other (loop, pace, outage wrapper)"] = total - compose - sum(
        v for k, v in timers.seconds.items() if k not in ("compose (total)", "render (Jinja, CSS, text part)", "MIME build")
    )
    print(f"  {backend}: {count} emails in {total:.2f} s = {count / total:.0f}/s in one process, {total * 1000 / count:.3f} ms per email;"
          f" statuses {statuses}   {load()}")
    for label, seconds in parts.items():
        print(f"    {label:44} {seconds * 1000 / count:7.3f} ms  {seconds / total:6.1%}")


def celery_cost(tasks: int, pool: str) -> None:
    """CPU per task of a worker consuming empty batches from Redis, and the publisher's time per task."""
    from workers.tasks import hand_out_with, make_app

    work, project, url = sending_project("af-celery-", PG_URL)
    with processes(work) as group:
        redis_url = start_redis(group)
        settings = settings_for(project, url, "smtp://127.0.0.1:9", redis_url)
        env = autofunnel_env(project, database_url=url, broker_url=redis_url, smtp_url="smtp://127.0.0.1:9", secret_key=SECRET)
        arguments = ["worker", "--pool", pool, "--concurrency", "1"]
        worker = group.autofunnel("worker", arguments, env)
        wait_for_log(group, "worker", "ready.", 60)
        hand_out = hand_out_with(make_app(settings))
        depth = _redis_depth(redis_url)
        hand_out([])
        wait_until(lambda: depth() == 0, 30, "the warm-up task")
        time.sleep(1)
        pids = [worker.pid, *children(worker.pid)]
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        started = time.perf_counter()
        for _ in range(tasks):
            hand_out([])
        published = time.perf_counter() - started
        wait_until(lambda: depth() == 0, 120, "the worker to take every task")
        drained = time.perf_counter() - started
        time.sleep(0.5)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    print(f"  Celery, {pool} pool: {tasks} empty tasks; publish {published * 1000 / tasks:.2f} ms per task (scheduler side),"
          f" worker CPU {cpu * 1000 / tasks:.2f} ms per task, queue drained at {tasks / drained:.0f} tasks/s   {load()}")


def _redis_depth(redis_url: str) -> Callable[[], int]:
    import redis

    client = redis.Redis(port=redis_port(redis_url))
    return lambda: int(client.llen("autofunnel"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--systems", default="pg:2x1:lean,pg:1x2:lean,pg:2xdefault:lean,pg:2x1:aiosmtpd,run:lean")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    parser.add_argument("--breakdown", type=int, default=2000, help="emails for the in-process breakdown; 0 to skip")
    parser.add_argument("--celery-tasks", type=int, default=2000)
    args = parser.parse_args()
    stop_signal_kills_group()
    systems = [s for s in args.systems.split(",") if s and s != "none"]
    results: dict[str, list[RunResult]] = defaultdict(list)
    print(f"{args.leads} due leads per run; {args.repeat} run(s) per system   {load()}", flush=True)
    for _ in range(args.repeat):
        for system in systems:
            result = run_system(system, args.leads, args.timeout)
            results[system].append(result)
            print_run(result)
            print_memory(result)
    for system, runs in results.items():
        print(f"{system:16} median {median([r.from_start for r in runs]):7.0f}/s from start,"
              f" {median([r.steady for r in runs]):7.0f}/s steady ({len(runs)} runs: "
              f"{', '.join(f'{r.steady:.0f}' for r in runs)} steady)")
    if args.breakdown:
        print("per-email breakdown, deliver() in this process, lean sink:")
        breakdown(PG_URL, args.breakdown)
        breakdown(PG_URL, args.breakdown, "-c synchronous_commit=off")
        breakdown(None, args.breakdown)
    if args.celery_tasks:
        print("queue cost:")
        celery_cost(args.celery_tasks, "solo")
        celery_cost(args.celery_tasks, "prefork")


if __name__ == "__main__":
    main()
