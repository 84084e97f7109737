"""What the report's tallies cost the writers on a filled database: one batch's tally statements, timed.

    python bench/gen_report_data.py --leads 1000000 --database-url sqlite:////tmp/af-report-1m.db
    python bench/bench_tally_writes.py --database-url sqlite:////tmp/af-report-1m.db [--no-buyers]

Each round, in one transaction that is then rolled back: 100 first clicks of
emails of random funnel leads (`count_engagement`), then 100 purchases by the
same leads an hour after those emails, of a product new to each (where the code has it, each
lead's tallies moved to its new set of products: `regroup_buyers`; then `count_events`), then another 100
purchases and the first clicks of their emails, recorded after them (late
touches: each purchase's attribution is counted again), then a refund of each of
the first 100 purchases (`count_events` of a batch of refunds: their shares taken down,
and each refund looked up for a purchase of its order), then 100 stage entries with a time
(the stage a purchase moves a lead to: where the code has it, the leads' split values read
(`entry_splits`), then the rows inserted with their indexes and `count_stage_entries`, and their
copies per product (`file_entry_products`), as the engine writes them). `--no-buyers` takes
leads who never bought: the usual click, with no purchase after it. Prints the
median and the fastest of `--rounds` rounds, ms per 100. Run the code before
and after alternately on the same database to compare.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from gen_report_data import EPOCH
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from autofunnel.clock import FixedClock
from autofunnel.config import load_settings
from autofunnel.services.runtime import Runtime
from autofunnel.services.starter import init_project
from autofunnel.services.tallies import count_engagement, count_events, count_stage_entries, ids_in
from autofunnel.store.models import Delivery, Event, StageEntry
from autofunnel.store.queries import insert_returning

try:
    from autofunnel.services.tallies import entry_splits
except ImportError:  # the code before stage entries carried their lead's split values
    entry_splits = None
try:
    from autofunnel.services.tallies import file_entry_products, regroup_buyers
except ImportError:  # the code before the tallies were kept by the products bought
    file_entry_products = regroup_buyers = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-buyers", action="store_true", help="only leads who never bought")
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="af-tally-bench-")) / "shop"
    init_project(project)
    rt = Runtime.open(load_settings(project, environ={"AUTOFUNNEL_DATABASE_URL": args.database_url, "AUTOFUNNEL_SECRET_KEY": "bench-secret-0123456789"}), FixedClock(EPOCH))
    with rt.db.read() as session:
        sent = session.execute(
            select(Delivery.id, Delivery.lead_id, Delivery.sent_at)
            .where(Delivery.flow == "yoga", Delivery.clicked_at.is_(None), Delivery.sent_at.is_not(None), Delivery.id % 97 == 3).limit(20000)
        ).all()
        if args.no_buyers:
            buyers = set(session.scalars(select(Event.lead_id).where(Event.type == "purchase", Event.lead_id.in_({lead for _, lead, _ in sent}))))
            sent = [row for row in sent if row[1] not in buyers]
    rng = random.Random(7)  # the same batches for every run, before and after
    times: dict[str, list[float]] = {"first clicks": [], "purchases": [], "late clicks": [], "refunds": [], "stage moves": []}
    for number in range(args.rounds):
        batch = rng.sample(sent, 200)
        with rt.db.engine.connect() as connection, Session(bind=connection) as session:
            transaction = connection.begin()
            times["first clicks"].append(click(session, batch[:100]))
            times["purchases"].append(buy(session, batch[:100], f"a{number}"))
            buy(session, batch[100:], f"b{number}")
            times["late clicks"].append(click(session, batch[100:]))
            times["refunds"].append(give_back(session, batch[:100], f"a{number}"))
            times["stage moves"].append(move(session, batch[:100]))
            transaction.rollback()
    for name, spent in times.items():
        print(f"{name}: median {statistics.median(spent) * 1000:.1f} ms per 100 (fastest {min(spent) * 1000:.1f})")


def click(session: Session, emails: Sequence[Any]) -> float:
    for delivery_id, _, sent_at in emails:
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(clicked_at=sent_at + timedelta(minutes=5)))
    started = time.perf_counter()
    count_engagement(session, "clicked", ids_in([delivery_id for delivery_id, _, _ in emails]))
    return time.perf_counter() - started


def buy(session: Session, emails: Sequence[Any], tag: str) -> float:
    """A purchase of a product none of the leads bought before: where the code has it, each lead's
    tallies move to its new set of products first (`regroup_buyers`, as `record_events` does)."""
    started = time.perf_counter()
    if regroup_buyers is not None:
        regroup_buyers(session, {lead_id: {f"bench-{tag}"} for _, lead_id, _ in emails})
    moved = time.perf_counter() - started
    ids = [
        session.scalar(insert(Event).values(
            lead_id=lead_id, key=f"bench-{tag}-{index}", type="purchase", at=sent_at + timedelta(hours=1), received_at=sent_at,
            properties={"amount": 29, "currency": "EUR", "product": f"bench-{tag}", "order_id": f"bench-{tag}-{index}"},
        ).returning(Event.id))
        for index, (_, lead_id, sent_at) in enumerate(emails)
    ]
    started = time.perf_counter()
    count_events(session, ids_in(ids), batch=frozenset({"purchase"}))
    return moved + time.perf_counter() - started


def give_back(session: Session, emails: Sequence[Any], tag: str) -> float:
    """A refund of each purchase `buy` made with `tag` (its order), two hours after it."""
    ids = [
        session.scalar(insert(Event).values(
            lead_id=lead_id, key=f"bench-{tag}-{index}-refund", type="refund", at=sent_at + timedelta(hours=3), received_at=sent_at,
            properties={"amount": 29, "currency": "EUR", "order_id": f"bench-{tag}-{index}"},
        ).returning(Event.id))
        for index, (_, lead_id, sent_at) in enumerate(emails)
    ]
    started = time.perf_counter()
    count_events(session, ids_in(ids), batch=frozenset({"refund"}))
    return time.perf_counter() - started


def move(session: Session, emails: Sequence[Any]) -> float:
    """Each lead enters a stage of its own (none has it) a day after the email, with its times."""
    one_per_lead = {lead_id: (lead_id, sent_at) for _, lead_id, sent_at in emails}.values()
    rows = [
        {"lead_id": lead_id, "funnel": "yoga", "stage": "bench-stage", "position": 4, "entered_at": sent_at + timedelta(days=1), "skipped": False,
         "cohort_at": sent_at, "channel": None, "since_previous_s": 86400.0, "since_first_s": 86400.0 + index}
        for index, (lead_id, sent_at) in enumerate(one_per_lead)
    ]
    started = time.perf_counter()
    if entry_splits is not None:
        splits = entry_splits(session, [row["lead_id"] for row in rows])
        for row in rows:
            row.update(splits[row["lead_id"]])
    entered = [row.id for row in insert_returning(session, StageEntry.__table__, rows, ("id",), conflict=("lead_id", "funnel", "stage"))]
    count_stage_entries(session, ids_in(entered))
    if file_entry_products is not None:
        file_entry_products(session, StageEntry.id, entered)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
