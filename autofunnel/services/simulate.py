"""Synthetic leads through the real services on a virtual clock: `simulate` and `demo`.

Every lead is subscribed, confirmed, opens, clicks, buys and unsubscribes through
the same services the API and the tracking links call, and every scheduler pass
and delivery is production's (`autofunnel.testing.FunnelTest`), with the mail
kept in memory. Only the behaviour is made up, from `Rates` and a seeded random
source, so a seed always gives the same run.

The behaviour model, per lead:
- a double opt-in lead confirms with probability `confirm`, 1 minute to 2 hours after subscribing;
- each email it gets is opened with probability `open`, 5 minutes to 2 days later, then
  clicked with probability `click` (a share of the opens), up to 2 hours after the open;
  it unsubscribes with probability `unsubscribe` per email;
- on entering a stage, it decides once whether it will reach the next stage, with that stage's
  conversion (`stages[next]`, else `stage`); if so it makes the next stage's `enter_on` event
  (a purchase of its product) 2 hours to `buy_within` days later; a purchase carries `amount`.
"""

from __future__ import annotations

import functools
import heapq
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.exc import SQLAlchemyError

from autofunnel.domain.statuses import DeliveryStatus, LeadStatus
from autofunnel.clock import ensure_utc
from autofunnel.domain.durations import parse_duration
from autofunnel.domain.model import Funnel
from autofunnel.domain.synthetic import PRICES, DayFigures, Rates, SimulationResult, day_figures
from autofunnel.errors import AutofunnelError, InvalidInputError
from autofunnel.services.senders import tracks_opens
from autofunnel.services.tracking import Engagement, record_engagements
from autofunnel.testing import HUMAN_AGENT, FunnelTest

DEFAULT_START = datetime.fromisoformat("2026-01-05T00:00:00+00:00")
"""Where a simulation's virtual clock starts unless its events say otherwise (a Monday)."""

TICK_EVERY = timedelta(minutes=5)
"""The simulated scheduler wakes every 5 virtual minutes (production: every second or so)."""


def parse_rates(text: str | None, funnel: Funnel) -> dict[str, float]:
    """`tripwire=0.3,customer=0.4` (also `open=`, `click=`, `unsubscribe=`, `confirm=`): each a fraction."""
    rates: dict[str, float] = {}
    if not text:
        return rates
    names = {stage.name for stage in funnel.stages[1:]} | {"open", "click", "unsubscribe", "confirm"}
    for part in text.split(","):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise InvalidInputError(f"--rates: {part.strip()!r}: expected NAME=FRACTION with NAME one of {', '.join(sorted(names))}", field="rates")
        try:
            value = float(raw.strip().rstrip("%")) / (100 if raw.strip().endswith("%") else 1)
        except ValueError:
            raise InvalidInputError(f"--rates: {raw.strip()!r} is not a fraction such as 0.3", field="rates") from None
        if not 0 <= value <= 1:
            raise InvalidInputError(f"--rates: {name}={value} is not between 0 and 1", field="rates")
        rates[name] = value
    return rates


def observed_rates(settings: Any, funnel: Funnel, today: date) -> Rates | None:
    """The conversions and email rates of the last 90 days in the project's database, if it has any."""
    from autofunnel.services.database import database_status, open_database
    from autofunnel.services.report import funnel_report, parse_report_query
    from autofunnel.services.runtime import Runtime

    url = settings.resolved_database_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return None
    try:
        if not database_status(url).up_to_date:
            return None
        db = open_database(url)
    except (AutofunnelError, SQLAlchemyError):
        return None
    try:
        from autofunnel.services.project import load_project

        rt = Runtime(settings=settings, db=db, project=load_project(Path(settings.project_dir)))
        params = {"from": (today - timedelta(days=89)).isoformat(), "to": today.isoformat()}
        report = funnel_report(rt, parse_report_query(funnel.slug, params, today))
    finally:
        db.dispose()
    stages = report["stages"]
    if not stages or not stages[0]["reached"]:
        return None
    rates = Rates(source="observed")
    for row in stages[1:]:
        if row["conversion_from_previous"] is not None:
            rates.stages[row["stage"]] = float(row["conversion_from_previous"])
    sent = sum(step["sent"] for step in report["steps"])
    opened = sum(step["opened"] for step in report["steps"])
    if sent:
        rates.open = opened / sent
        rates.unsubscribe = sum(step["unsubscribed"] for step in report["steps"]) / sent
        if opened:
            rates.click = sum(step["clicked"] for step in report["steps"]) / opened
    return rates


class Behaviour:
    """Walks a FunnelTest through time, making up what leads do; one random source for all of it."""

    def __init__(self, test: FunnelTest, funnel: Funnel, rates: Rates, rng: random.Random, *, currency: str = "EUR") -> None:
        self.t, self.funnel, self.rates, self.rng, self.currency = test, funnel, rates, rng, currency
        # A reader reads (and may click) either way; the open is only recorded where a pixel could see it.
        self.records_opens = tracks_opens(test.runtime.settings, funnel)
        self._queue: list[tuple[datetime, int, str, Any]] = []
        self._seq = 0
        self._seen_sent = 0
        self.orders = 0
        self.refund_every = 0
        self.actions = 0
        self._flow_of: dict[int, str] = {}
        """Each sent email's flow, from `_schedule_engagement`'s read, for the links its clicks follow."""

    def at(self, moment: datetime, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (moment, self._seq, kind, payload))

    def subscribe_at(
        self, moment: datetime, email: str, channel: str | None = None, first_name: str | None = None,
        owner: str | None = None, fields: Mapping[str, Any] | None = None,
    ) -> None:
        self.at(moment, "subscribe", (email, channel, first_name, owner, fields))

    def run_until(self, end: datetime, on_progress: Callable[[datetime], None] | None = None) -> None:
        """Apply what leads do in time order. The scheduler passes run on the test's grid
        (`tick_every`); what leads do between two passes is recorded in one batch per kind at
        the moment of the last of them, as the API would receive it, each event with its `at`."""
        t = self.t
        grid = t.tick_every or timedelta(seconds=1)
        while self._queue and self._queue[0][0] <= end:
            first = self._queue[0][0]
            slot_start = t._grid_origin + grid * ((first - t._grid_origin) // grid)
            slot_end = slot_start + grid
            if slot_start > t.now:
                t.advance_to(slot_start)
                self._schedule_engagement()
            events: list[dict[str, Any]] = []
            entered: list[tuple[int, int]] = []
            engagements: list[Engagement] = []
            while self._queue and self._queue[0][0] < slot_end and self._queue[0][0] <= end:
                moment, _, kind, payload = heapq.heappop(self._queue)
                if moment > t.now:
                    t.clock.current = moment
                self.actions += 1
                if kind == "subscribe":
                    self._subscribe(payload)
                elif kind == "open":
                    if self.records_opens:
                        engagements.append(Engagement("opened", payload, HUMAN_AGENT))
                    if self.rng.random() < self.rates.click:
                        self.at(moment + timedelta(minutes=self.rng.uniform(1, 120)), "click", payload)
                elif kind == "click":
                    engagements.append(Engagement("clicked", payload, HUMAN_AGENT, extra={"url": self._first_link(payload)}))
                else:
                    item, stage_index = self._event(kind, payload, moment)
                    events.append(item)
                    if stage_index is not None:
                        entered.append((item["lead_id"], stage_index))
            if events:
                t.events(events)
            if engagements:
                record_engagements(t.runtime, engagements)
            for lead_id, stage_index in entered:
                self._entered(lead_id, stage_index)
            if on_progress is not None:
                on_progress(t.now)
        t.advance_to(max(end, t.now))
        self._schedule_engagement()

    # What leads do ----------------------------------------------------------------------------

    def _subscribe(self, payload: tuple[str, str | None, str | None, str | None, Mapping[str, Any] | None]) -> None:
        email, channel, first_name, owner, fields = payload
        source = {"channel": channel} if channel else None
        lead = self.t.subscribe(email, self.funnel.slug, source=source, first_name=first_name, owner=owner, fields=fields)
        if lead.status == LeadStatus.PENDING and self.rng.random() < self.rates.confirm:
            self.at(self.t.now + timedelta(minutes=self.rng.uniform(1, 120)), "event", (lead.id, "confirmed", {}, None))
        self._entered(lead.id, 0)

    def _entered(self, lead_id: int, index: int) -> None:
        stages = self.funnel.stages
        if index + 1 >= len(stages):
            return
        following = stages[index + 1]
        if following.enter_on is None or self.rng.random() >= self.rates.conversion(following.name):
            return
        delay = timedelta(hours=self.rng.uniform(2, max(2.0, self.rates.buy_within * 24)))
        properties = dict(following.enter_on.properties)
        if following.enter_on.event == "purchase":
            properties.setdefault("amount", PRICES[min(index, len(PRICES) - 1)])
            properties.setdefault("currency", self.currency)
        self.at(self.t.now + delay, "event", (lead_id, following.enter_on.event, properties, index + 1))

    def _event(self, kind: str, payload: Any, moment: datetime) -> tuple[dict[str, Any], int | None]:
        """The API item for an event action, and the stage it enters (for a purchase)."""
        if kind == "unsubscribe":
            lead_id, delivery_id = payload
            return {"type": "unsubscribed", "lead_id": lead_id, "at": moment.isoformat(), "properties": {"delivery": delivery_id}}, None
        if kind == "refund":
            lead_id, order, properties = payload
            refund = {"order_id": order, "amount": properties.get("amount"), "currency": properties.get("currency"), "product": properties.get("product")}
            return {"type": "refund", "lead_id": lead_id, "id": f"refund-{order}", "at": moment.isoformat(),
                    "properties": {k: v for k, v in refund.items() if v is not None}}, None
        lead_id, event_type, properties, stage_index = payload
        item: dict[str, Any] = {"type": event_type, "lead_id": lead_id, "at": moment.isoformat(), "properties": properties}
        if event_type == "purchase":
            self.orders += 1
            item["id"] = f"sim-order-{self.orders}"
            item["properties"] = {**properties, "order_id": item["id"]}
            if self.refund_every and self.orders % self.refund_every == 0:
                self.at(moment + timedelta(days=self.rng.uniform(1, 6)), "refund", (lead_id, item["id"], item["properties"]))
        return item, stage_index

    def _first_link(self, delivery_id: int) -> str | None:
        """The URL a simulated click goes to: the funnel's first offer, else the site's base URL
        (which link of an email was clicked changes no figure the report shows)."""
        flow = self.t.runtime.project.flows.get(self._flow_of[delivery_id])
        offers = getattr(flow, "offers", {}) or {}
        for offer in offers.values():
            return str(offer.url)
        return f"{self.t.runtime.settings.base_url}/"

    def _schedule_engagement(self) -> None:
        """Opens, clicks and unsubscribes for the emails sent since the last look."""
        fresh = self.t.sent_ids[self._seen_sent:]
        self._seen_sent = len(self.t.sent_ids)
        if not fresh:
            return
        with self.t.runtime.db.look() as connection:
            rows = connection.execute(_sent_statement(), {"ids": fresh}).all()
        for row in sorted(rows):
            if row.kind != "email":
                continue
            self._flow_of[row.id] = row.flow
            sent = ensure_utc(row.sent_at)
            if self.rng.random() < self.rates.open:
                self.at(sent + timedelta(minutes=self.rng.uniform(5, 2880)), "open", row.id)
            if self.rng.random() < self.rates.unsubscribe:
                self.at(sent + timedelta(minutes=self.rng.uniform(5, 2880)), "unsubscribe", (row.lead_id, row.id))


@functools.cache
def _sent_statement() -> Select[Any]:
    """The emails sent since the last look, built once: the walk looks after every pass."""
    from autofunnel.store.models import Delivery

    return select(Delivery.id, Delivery.lead_id, Delivery.kind, Delivery.sent_at, Delivery.flow).where(Delivery.id.in_(bindparam("ids", expanding=True)))


# Replaying a recorded or hand-written stream ---------------------------------------------------


@dataclass(frozen=True)
class ReplayLine:
    at: datetime
    line: int
    item: dict[str, Any]


def read_events(path: Path, start: datetime) -> list[ReplayLine]:
    """A JSONL stream: one object a line, in the shape of POST /api/v1/events items, plus
    `{"type": "subscribe", "email": …, first_name/timezone/source/owner/fields/tags, "confirm": true}`
    lines; `at` (ISO 8601) or `after` (a duration from the start, e.g. "2d3h") places each."""
    lines: list[ReplayLine] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{number}: not JSON: {exc.msg}", field="events") from None
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise InvalidInputError(f"{path}:{number}: expected an object with a type", field="events")
        after = item.pop("after", None)
        if after is not None:
            try:
                moment = start + parse_duration(after)
            except ValueError as exc:
                raise InvalidInputError(f"{path}:{number}: after: {exc}", field="events") from None
        elif item.get("at"):
            try:
                moment = ensure_utc(datetime.fromisoformat(str(item.pop("at")).replace("Z", "+00:00")))
            except ValueError as exc:
                raise InvalidInputError(f"{path}:{number}: at: {exc}", field="events") from None
        else:
            raise InvalidInputError(f"{path}:{number}: give `at` (ISO 8601) or `after` (a duration from the start)", field="events")
        lines.append(ReplayLine(moment, number, item))
    lines.sort(key=lambda replay: (replay.at, replay.line))
    return lines


def replay(test: FunnelTest, funnel: str, lines: Iterable[ReplayLine]) -> None:
    """Feed the stream in time order, every scheduler pass run at its moment in between."""
    for entry in lines:
        test.advance_to(max(entry.at, test.now))
        item = dict(entry.item)
        try:
            if item["type"] == "subscribe":
                item.pop("type")
                email = item.pop("email")
                confirm = bool(item.pop("confirm", False))
                held_out = item.pop("held_out", None)
                test.subscribe(email, item.pop("funnel", funnel), confirm=confirm, held_out=held_out, **item)
            else:
                test.events([item])
        except (TypeError, InvalidInputError) as exc:
            raise InvalidInputError(f"events line {entry.line}: {exc}", field="events") from None


# The whole run --------------------------------------------------------------------------------


def simulate(
    project_dir: Path,
    funnel_slug: str,
    *,
    leads: int = 100,
    days: int = 30,
    rates: Rates | None = None,
    seed: int = 0,
    events: Path | None = None,
    start: datetime | None = None,
) -> SimulationResult:
    """A cohort of `leads` subscribing over the first day (or the `events` stream), run for `days`."""
    begin = ensure_utc(start or DEFAULT_START)
    stream = read_events(events, begin) if events is not None else None
    if stream:
        begin = min(begin, stream[0].at.replace(hour=0, minute=0, second=0, microsecond=0))
    rates = rates or Rates()
    clock_start = time.perf_counter()
    with FunnelTest(project_dir, start=begin, seed=seed, run_due=False, tick_every=TICK_EVERY) as t:
        t.render_outbox = False
        flow = t.runtime.flow(funnel_slug)
        if not isinstance(flow, Funnel):
            raise InvalidInputError(f"{funnel_slug!r} is a sequence; simulate takes a funnel", field="funnel")
        end = begin + timedelta(days=days)
        if stream is not None:
            replay(t, funnel_slug, stream)
            end = max(end, t.now)
            t.advance_to(end)
            lead_count = _count_leads(t, funnel_slug)
        else:
            rng = random.Random(seed)
            behaviour = Behaviour(t, flow, rates, rng)
            for index in range(leads):
                behaviour.subscribe_at(begin + timedelta(seconds=rng.uniform(0, 86400)), f"sim{index + 1}@example.com")
            behaviour.run_until(end)
            lead_count = leads
        report = t.report(funnel_slug, **{"from": begin.date().isoformat(), "to": (end - timedelta(seconds=1)).date().isoformat()})
        per_day = _per_day(t, flow, begin, (end - begin).days or 1)
        emails = len(t.sent_ids)
    seconds = time.perf_counter() - clock_start
    rate_info = {"source": rates.source if stream is None else "events", "open": rates.open, "click": rates.click,
                 "unsubscribe": rates.unsubscribe, "confirm": rates.confirm,
                 "stages": {stage.name: rates.conversion(stage.name) for stage in flow.stages[1:]}}
    return SimulationResult(funnel_slug, seed, lead_count, (end - begin).days or 1, begin.isoformat(), rate_info, per_day, report, emails, seconds)


def _count_leads(t: FunnelTest, funnel: str) -> int:
    from sqlalchemy import func

    from autofunnel.store.models import StageEntry

    with t.runtime.db.read() as session:
        return int(session.scalar(select(func.count(func.distinct(StageEntry.lead_id))).where(StageEntry.funnel == funnel)) or 0)


def _per_day(t: FunnelTest, flow: Funnel, begin: datetime, days: int) -> list[DayFigures]:
    """Emails sent each day by template, and how many leads sit in each stage at each day's end."""
    from autofunnel.store.models import Delivery, StageEntry

    with t.runtime.db.read() as session:
        sent = session.execute(
            select(Delivery.sent_at, Delivery.template).where(Delivery.flow == flow.slug, Delivery.status == DeliveryStatus.SENT)
        ).all()
        entries = session.execute(
            select(StageEntry.lead_id, StageEntry.position, StageEntry.entered_at)
            .where(StageEntry.funnel == flow.slug, StageEntry.skipped.is_(False))
        ).all()
    return day_figures(
        ((ensure_utc(moment), template) for moment, template in sent),
        ((lead, position, ensure_utc(at)) for lead, position, at in entries),
        [stage.name for stage in flow.stages], begin, days,
    )
