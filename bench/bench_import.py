"""`autofunnel leads import` speed and memory: rows/s and the process's peak RSS.

    python bench/bench_import.py --rows 100000
    python bench/bench_import.py --rows 100000 --database-url postgresql://autofunnel:autofunnel@127.0.0.1:5432/autofunnel_bench_import
    python bench/bench_import.py --rows 100000 --database-url … --writers 1   # one chunk at a time, as before 2026-12-05

Writes a CSV of N leads (email, first name, timezone, tags, a channel, one
extra field; 1 row in 500 bad) to a temporary folder, migrates a fresh
database (a SQLite file, or the PostgreSQL database named, dropped and made
again), imports the file into the starter project's yoga funnel through the
same service the command calls, and prints rows/s and the peak resident
memory of the whole process (`getrusage`), with the CPU time this process
used (on a shared machine, wall time mostly measures the neighbours), then the same for a second run of
the same file (which adds nothing).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from autofunnel.config import load_settings
from autofunnel.services.importing import import_leads
from autofunnel.services.runtime import Runtime
from autofunnel.services.starter import init_project
from autofunnel.store.db import backend_name, normalize_url
from autofunnel.store.migrate import upgrade

ZONES = ("Europe/Berlin", "America/New_York", "", "Asia/Tokyo", "Europe/Paris")
CHANNELS = ("instagram", "google", "newsletter", "")


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("email,first_name,timezone,tags,source.channel,plan\n")
        for i in range(rows):
            email = f"lead{i}@example.com" if i % 500 != 7 else f"broken{i}-at-example.com"
            out.write(f"{email},Name{i},{ZONES[i % 5]},{'vip;yoga' if i % 3 == 0 else ''},{CHANNELS[i % 4]},p{i % 7}\n")


def fresh_postgres(url: str) -> None:
    server = make_url(normalize_url(url))
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{server.database}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{server.database}"'))
    admin.dispose()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--writers", type=int, help="chunks written at once on PostgreSQL (default: the import's own, POSTGRES_WRITERS)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="af-import-bench-"))
    project = folder / "shop"
    init_project(project)
    url = args.database_url or f"sqlite:///{folder / 'autofunnel.db'}"
    if backend_name(url) == "postgresql":
        fresh_postgres(url)
    upgrade(url)
    source = folder / "leads.csv"
    write_csv(source, args.rows)
    print(f"backend: {backend_name(url)}; file: {args.rows:,} rows, {source.stat().st_size / 1e6:.1f} MB; peak RSS before import {peak_rss_mb():.0f} MB")
    rt = Runtime.open(load_settings(project, environ={"AUTOFUNNEL_DATABASE_URL": url, "AUTOFUNNEL_SECRET_KEY": "bench-secret-0123456789"}))
    try:
        for run in ("import", "again (adds nothing)"):
            started, cpu = time.perf_counter(), time.process_time()
            result = import_leads(rt, source, "yoga", writers=args.writers)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            print(
                f"{run}: {result.rows:,} rows in {elapsed:.1f} s = {result.rows / elapsed:,.0f} rows/s "
                f"(this process's CPU {cpu:.1f} s: {result.rows / cpu:,.0f} rows per CPU-second); "
                f"imported {result.imported:,}, already {result.already_in_funnel:,}, rejected {result.rejected:,}; "
                f"peak RSS {peak_rss_mb():.0f} MB"
            )
    finally:
        rt.close()


if __name__ == "__main__":
    main()
