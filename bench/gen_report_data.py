"""Fill a database with a funnel's history for the report benchmark: N leads, ~5 events each.

    python bench/gen_report_data.py --leads 1000000 --database-url sqlite:////tmp/af-report-1m.db
    python bench/gen_report_data.py --leads 1000000 --database-url postgresql://autofunnel:autofunnel@127.0.0.1/autofunnel_bench_reports

The database's public schema is dropped first: give it a database of its own.
Writes what the engine writes, directly (SQLite: one executemany per table
chunk; PostgreSQL: COPY), into an emptied, migrated database: leads (channel,
owner, segment, region, products bought), the yoga funnel's stage entries with a realistic
drop-off (lead → tripwire 52 % → customer 41 % → vip 60 %, a few jumping a
stage), holdout assignments (10 %), deliveries of the lead stage's and later
stages' emails with human opens and clicks, and the events behind it all:
subscribed, confirmed, opened and clicked (some by bots), purchases, unsubscribes;
then each stage entry with a time once per product its lead bought, and the tallies.
Leads enter over the 90 days from 2026-01-01, so `--from 2026-01-01 --to 2026-03-31`
is the full cohort report.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import fresh_project
from sqlalchemy import text
from sqlalchemy.orm import Session

from autofunnel.domain.report import with_products
from autofunnel.services.tallies import file_entry_products, rebuild_tallies
from autofunnel.store.db import Database, backend_name

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 90
CHANNELS = (("instagram", 0.35), ("facebook", 0.25), ("google", 0.2), ("newsletter", 0.12), ("tiktok", 0.08))
OWNERS = tuple(f"manager{i}@shop.example" for i in range(8))
SEGMENTS = ("beginner", "returning", "pro")
REGIONS = ("eu", "us", "uk", "apac")
STAGE_PRODUCTS = {"tripwire": "mini-course", "customer": "full-course", "vip": "coaching"}
PRICES = {"mini-course": 19.0, "full-course": 290.0, "coaching": 900.0}
LEAD_STEPS = ("welcome", "tripwire-offer", "tripwire-reminder", "tripwire-expired")
TABLES = {
    "leads": ("id", "email", "fields", "tags", "source", "owner", "status", "created_at", "updated_at", "products"),
    "stage_entries": ("lead_id", "funnel", "stage", "position", "entered_at", "skipped", "cohort_at", "channel", "since_previous_s", "since_first_s", "owner", "segment", "region"),
    "assignments": ("lead_id", "flow", "name", "value", "assigned_at"),
    "deliveries": ("id", "lead_id", "flow", "stage", "step_id", "occurrence", "kind", "template", "to_address", "status", "attempts", "created_at", "sent_at", "opened_at", "clicked_at"),
    "events": ("lead_id", "key", "type", "properties", "at", "received_at"),
}
JSON_COLUMNS = {"fields", "tags", "source", "properties"}


class Rows:
    """The rows of one chunk of leads, per table."""

    def __init__(self) -> None:
        self.tables: dict[str, list[tuple[Any, ...]]] = {name: [] for name in TABLES}
        self.delivery_id = 0

    def add(self, table: str, *values: Any) -> None:
        self.tables[table].append(values)


def lead_rows(rng: random.Random, rows: Rows, lead_id: int, delivery_base: int) -> None:
    """One lead's whole story, with the drop-off the issue's worked example describes."""
    entered = EPOCH + timedelta(seconds=rng.randrange(DAYS * 86400))
    channel = rng.choices([c for c, _ in CHANNELS], weights=[w for _, w in CHANNELS])[0]
    email = f"lead{lead_id}@bench.example"
    segment, region = rng.choice(SEGMENTS), rng.choice(REGIONS)
    owner = rng.choice(OWNERS)
    lead = [lead_id, email, {"segment": segment, "region": region}, [], {"channel": channel, "utm_source": channel}, owner, "active", entered, entered, None]
    held_out = rng.random() < 0.1
    rows.add("assignments", lead_id, "yoga", "holdout", "held_out" if held_out else "treated", entered)
    events = [("subscribed", {"funnel": "yoga", "source": {"channel": channel}}, entered)]
    if rng.random() < 0.85:
        events.append(("confirmed", {}, entered + timedelta(minutes=rng.randrange(1, 600))))
    rows.add("stage_entries", lead_id, "yoga", "lead", 0, entered, False, entered, channel, None, None, None, None, None)

    reached = 0
    moment = entered
    path: list[tuple[str, int, datetime, bool]] = []
    for position, (stage, rate) in enumerate((("tripwire", 0.52), ("customer", 0.413), ("vip", 0.605)), start=1):
        if rng.random() >= rate * (0.8 if held_out else 1.0):
            break
        moment = moment + timedelta(seconds=rng.randrange(3600, 6 * 86400))
        path.append((stage, position, moment, False))
        reached = position
    if len(path) >= 2 and rng.random() < 0.04:  # bought the course straight away: tripwire skipped at that moment
        path[0] = ("tripwire", 1, path[1][2], True)
    previous: tuple[datetime, bool] = (entered, False)
    for stage, position, at, skip in path:
        since_previous = None if skip or previous[1] else (at - previous[0]).total_seconds()
        since_first = None if skip else (at - entered).total_seconds()
        splits = (None, None, None) if skip else (owner, segment, region)  # the lead's values, on the entries with a time
        rows.add("stage_entries", lead_id, "yoga", stage, position, at, skip, entered, channel, since_previous, since_first, *splits)
        previous = (at, skip)
        if not skip:
            product = STAGE_PRODUCTS[stage]
            events.append(("purchase", {"product": product, "amount": PRICES[product], "currency": "EUR", "order_id": f"o{lead_id}-{position}"}, at))
            if rng.random() < 0.03:  # refunded, a third of them in part
                back = PRICES[product] if rng.random() < 0.67 else round(PRICES[product] * 0.3, 2)
                events.append(("refund", {"product": product, "amount": back, "currency": "EUR", "order_id": f"o{lead_id}-{position}"}, at + timedelta(days=rng.randrange(1, 14))))

    sends = [] if held_out else [("lead", step, entered + timedelta(days=index)) for index, step in enumerate(LEAD_STEPS[: 2 if reached else 4])]
    if reached >= 1 and not held_out:
        sends.append(("tripwire", "thanks-mini", path[0][2] + timedelta(minutes=5)))
    if reached >= 2 and not held_out:
        sends.append(("customer", "welcome-core", path[1][2] + timedelta(minutes=5)))
    for number, (stage, step, sent) in enumerate(sends):
        delivery_id = delivery_base + number
        opened = clicked = None
        if rng.random() < 0.45:
            opened = sent + timedelta(minutes=rng.randrange(5, 2000))
            events.append(("opened", {"delivery": delivery_id, "flow": "yoga", "step": step, "bot": False}, opened))
            if rng.random() < 0.3:
                clicked = opened + timedelta(seconds=rng.randrange(5, 300))
                events.append(("clicked", {"delivery": delivery_id, "flow": "yoga", "step": step, "bot": False, "url": "https://shop.example"}, clicked))
        if rng.random() < 0.1:
            events.append(("clicked", {"delivery": delivery_id, "flow": "yoga", "step": step, "bot": True, "url": "https://shop.example"}, sent + timedelta(seconds=2)))
        rows.add("deliveries", delivery_id, lead_id, "yoga", stage, step, 1, "email", step, email, "sent", 1, sent, sent, opened, clicked)
        if rng.random() < 0.004:
            events.append(("unsubscribed", {"delivery": delivery_id, "via": "link"}, sent + timedelta(hours=3)))
    lead[-1] = with_products(None, [properties["product"] for kind, properties, _ in events if kind == "purchase"])
    rows.add("leads", *lead)
    for number, (kind, properties, at) in enumerate(events):
        rows.add("events", lead_id, f"b{lead_id}-{number}", kind, properties, at, at)
    rows.delivery_id = delivery_base + len(sends)


def chunks_of(total: int, size: int, seed: int) -> Iterator[Rows]:
    rng = random.Random(seed)
    delivery_id = 1
    for low in range(0, total, size):
        rows = Rows()
        for lead_id in range(low + 1, min(total, low + size) + 1):
            lead_rows(rng, rows, lead_id, delivery_id)
            delivery_id = rows.delivery_id
        yield rows


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


def write(db: Database, rows: Rows) -> None:
    with db.engine.begin() as connection:
        raw = connection.connection.driver_connection
        for table, columns in TABLES.items():
            data = rows.tables[table]
            if not data:
                continue
            if db.backend == "sqlite":
                cursor = raw.cursor()
                cursor.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                    [tuple(_sqlite_value(v) for v in row) for row in data],
                )
                continue
            json_at = [index for index, name in enumerate(columns) if name in JSON_COLUMNS]
            with raw.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in data:
                    values = list(row)
                    for index in json_at:
                        values[index] = json.dumps(values[index])
                    copy.write_row(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    if args.database_url and backend_name(args.database_url) == "sqlite":
        path = Path(args.database_url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    _, _, url = fresh_project("af-report-", args.database_url)
    db = Database.from_url(url)
    started = time.perf_counter()
    for rows in chunks_of(args.leads, 50_000, args.seed):
        write(db, rows)
    with db.engine.begin() as connection:
        if db.backend == "postgresql":
            connection.execute(text("SELECT setval(pg_get_serial_sequence('leads', 'id'), (SELECT max(id) FROM leads))"))
            connection.execute(text("SELECT setval(pg_get_serial_sequence('deliveries', 'id'), (SELECT max(id) FROM deliveries))"))
        counts = {table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar() for table in TABLES}
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE"))  # the planner needs statistics for the recount's joins
    written = time.perf_counter()
    # The running tallies the engine would have written along the way, counted in one go.
    with Session(db.engine) as session, session.begin():
        file_entry_products(session)  # each timed stage entry once per product its lead bought
        rebuild_tallies(session)
    tallied = time.perf_counter()
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # What autovacuum does to a table soon after a load: the visibility map (index-only walks)
        # and, like the other tables' before the recount, the new tallies' statistics.
        connection.execute(text("VACUUM ANALYZE" if db.backend == "postgresql" else "ANALYZE cohort_tallies"))
        tallies = connection.execute(text("SELECT count(*) FROM cohort_tallies")).scalar()
    db.dispose()
    print(f"{backend_name(url)}: {url}")
    print("  ".join(f"{table} {count:,}" for table, count in counts.items()), f"in {written - started:.0f} s")
    print(f"cohort_tallies {tallies:,} rows counted in {tallied - written:.1f} s")


if __name__ == "__main__":
    main()
