"""`autofunnel demo`: the example project with 90 days of simulated history in its own database.

The history is made by the real services on a virtual clock walking from 90 days ago to now
(services/simulate.py's behaviour model, `autofunnel.testing`'s runner), so every row — leads,
stage entries, deliveries, opens, clicks, purchases, refunds, the report's tallies, ad spend —
is one production would have written. Mail goes to an in-memory transport: nothing is emailed,
and the project's `outbox/` stays empty. When the clock reaches now, every step that fell due
has run; leads still mid-funnel wait for their next step, which `autofunnel run` then sends on
schedule (into `outbox/`, the default file transport; the addresses are @example.com).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from autofunnel.domain.statuses import EnrollmentStatus
from autofunnel.clock import SystemClock
from autofunnel.config import CONFIG_FILE
from autofunnel.domain.model import Funnel
from autofunnel.domain.synthetic import CHANNELS, Rates
from autofunnel.services.simulate import Behaviour
from autofunnel.testing import FunnelTest

DAYS = 90
FUNNEL = "yoga"
FIRST_NAMES = ("Ann", "Ben", "Carla", "Dev", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Luca", None, None)
TIMEZONES = ("Europe/Berlin", "Europe/London", "Europe/Paris", "America/New_York", None)
OWNERS = ("maria@yoga.example", "tom@yoga.example", "lee@yoga.example")
"""The demo shop's three sales managers: a lead from coaching calls and workshops has one, the rest none."""
SEGMENTS = ("beginner", "returning", "teacher")
REGIONS = ("eu", "uk", "us")
DAILY_SPEND = {"instagram": (30, 60), "google": (20, 45), "facebook": (10, 25)}
"""Euros a day per paid channel (uniform between the two); the other channels cost nothing."""
DEMO_RATES = Rates(open=0.42, click=0.22, unsubscribe=0.006, confirm=0.82, stages={"tripwire": 0.22, "customer": 0.3, "vip": 0.12}, buy_within=4.0, source="demo")
TICK_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class DemoSummary:
    leads: int
    emails: int
    purchases: int
    refunds: int
    due_next_day: int
    seconds: float
    since: date
    """The first day of the history, for `report --from`."""

    @property
    def text(self) -> str:
        return (
            f"demo ready in {self.seconds:.0f} s: {self.leads} leads over {DAYS} days, {self.emails} emails (none sent for real), "
            f"{self.purchases} purchases, {self.refunds} refunds, ad spend on {len(DAILY_SPEND)} channels; "
            f"{self.due_next_day} step(s) of leads still mid-funnel fall due in the next 24 h, which `run` sends on schedule into outbox/"
        )


def make_demo(directory: Path, *, leads: int = 2000, seed: int = 0, console: Any = None) -> DemoSummary:
    """Write the example project into `directory` and fill its database; refuses an existing project."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from autofunnel.config import load_settings
    from autofunnel.services.runtime import project_secret
    from autofunnel.services.starter import init_project

    started = time.perf_counter()
    init_project(directory)
    _track_opens(directory)
    settings = load_settings(directory, environ={})
    database_url = settings.resolved_database_url
    database = Path(database_url[len("sqlite:///"):])
    now = SystemClock().now()
    begin = (now - timedelta(days=DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    rng = random.Random(seed)
    secret = {"secret_key": project_secret(directory)}
    with FunnelTest(directory, start=begin, seed=seed, run_due=False, tick_every=TICK_EVERY, database=database, settings=secret) as t:
        t.render_outbox = False
        flow = t.runtime.flow(FUNNEL)
        assert isinstance(flow, Funnel)
        behaviour = Behaviour(t, flow, DEMO_RATES, rng)
        behaviour.refund_every = 60
        _arrivals(behaviour, rng, begin, now, leads)
        for day in range(DAYS + 1):
            moment = begin + timedelta(days=day)
            if moment.date() > now.date():
                break
            for channel, (low, high) in DAILY_SPEND.items():
                t.spend(channel, f"{rng.uniform(low, high):.2f}", moment.date().isoformat())
        with Progress(TextColumn("simulating 90 days"), BarColumn(), TextColumn("{task.fields[day]}"), TimeElapsedColumn(),
                      console=console, transient=True, disable=console is None) as progress:
            task = progress.add_task("days", total=DAYS, day="")

            def shown(moment: datetime) -> None:
                progress.update(task, completed=(moment - begin).total_seconds() / 86400, day=moment.date().isoformat())

            behaviour.run_until(now, on_progress=shown)
            end = SystemClock().now()  # the walk took a while: catch up with the real now
            t.advance_to(max(end, t.now))
            t.run_due()
            t.fold()
        summary = _summary(t, len(t.sent_ids), time.perf_counter() - started, begin.date())
    return summary


def _track_opens(directory: Path) -> None:
    """The demo's readers open their emails and its admin shows opens, so its project tracks them."""
    config = directory / CONFIG_FILE
    text = config.read_text()
    assert "# track_opens = false\n" in text, "the starter's autofunnel.toml names track_opens"
    config.write_text(text.replace("# track_opens = false\n", "track_opens = true\n"))


def _arrivals(behaviour: Behaviour, rng: random.Random, begin: datetime, end: datetime, leads: int) -> None:
    """Subscriptions spread over the days, busier on weekdays and growing a little over time, each
    with a segment and a region (lead fields) and most with an owner, so the admin's split by
    owner, segment or region has groups to show."""
    span = (end - begin).total_seconds()
    channels = [name for name, _ in CHANNELS]
    weights = [weight for _, weight in CHANNELS]
    moments = []
    while len(moments) < leads:
        moment = begin + timedelta(seconds=rng.uniform(0, span) ** 0.95 * span ** 0.05)
        if moment.weekday() >= 5 and rng.random() < 0.35:
            continue
        moments.append(moment)
    for index, moment in enumerate(sorted(moments)):
        owner = rng.choice(OWNERS) if rng.random() < 0.6 else None
        fields = {"segment": rng.choices(SEGMENTS, (5, 3, 1))[0], "region": rng.choices(REGIONS, (5, 2, 3))[0]}
        behaviour.subscribe_at(moment, f"demo{index + 1}@example.com", rng.choices(channels, weights)[0], rng.choice(FIRST_NAMES), owner, fields)


def _summary(t: FunnelTest, emails: int, seconds: float, since: date) -> DemoSummary:
    from autofunnel.store.models import Enrollment, Event, Lead

    with t.runtime.db.read() as session:
        leads = session.scalar(select(func.count()).select_from(Lead)) or 0
        purchases = session.scalar(select(func.count()).select_from(Event).where(Event.type == "purchase")) or 0
        refunds = session.scalar(select(func.count()).select_from(Event).where(Event.type == "refund")) or 0
        due = session.scalar(
            select(func.count()).select_from(Enrollment)
            .where(Enrollment.status == EnrollmentStatus.ACTIVE, Enrollment.due_at <= t.now + timedelta(days=1))
        ) or 0
    return DemoSummary(leads, emails, purchases, refunds, due, seconds, since)
