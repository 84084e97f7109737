"""What the engine and the emails know about a lead, read in one place for many leads at once.

Three paths act on many leads per transaction and each needs some of what is stored
about them: the scheduler (a lead's columns, deadlines, variant assignments, recent
sends, opens and clicks, the events its conditions ask about), the sending batch (the
columns and deadlines its templates show) and event routing (status, stage entries,
enrollments, the events that stop a sequence). They all read through `load_facts`,
naming the parts they need in `Wanted`: each part is one query for the whole batch,
and a part nobody asked for is not read — ingestion, the busiest writer, needs a
lead's status but not its fields, so a shared loader must not make it pay for them.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from autofunnel.domain.conditions import EventFact
from autofunnel.domain.engine import LeadFacts
from autofunnel.domain.statuses import DeliveryStatus
from autofunnel.store.models import Assignment, Deadline, Delivery, Enrollment, Event, Lead, StageEntry
from autofunnel.store.queries import Executor, among_param, chunks, is_postgres
from autofunnel.store.types import UTCDateTime

PART = 1000
"""Leads per query: one batch of the scheduler (500) or of the API (1000 events) is one query."""

COUNTED_SENDS = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.SENT)
"""The emails a frequency cap counts: those on their way or gone, not those skipped or failed."""


@dataclass
class StoredLead:
    """A lead's own columns. The scheduler changes `tags` and `fields` in place as tag and
    field steps run, so a later step of the same batch sees them."""

    email: str
    status: str
    first_name: str | None
    timezone: str | None
    owner: str | None
    tags: list[str]
    fields: dict[str, Any]


@dataclass(frozen=True)
class Wanted:
    """Which of the leads' facts a caller reads; each part costs one query per `PART` leads."""

    statuses: bool = False
    """Only `status`, in `LoadedFacts.statuses` (event routing's need)."""
    profiles: bool = False
    """Every column of `StoredLead`, in `LoadedFacts.profiles` (statuses come with them)."""
    deadlines: bool = False
    assignments: bool = False
    sends_since: datetime | None = None
    """Emails to the lead created after this moment, from every funnel (frequency caps)."""
    engagement: bool = False
    """Which send steps the lead opened or clicked."""
    event_types: Sequence[str] = ()
    """The lead's stored events of these types."""
    events_left_out: frozenset[int] = frozenset()
    """Event ids not to read (a batch's own events, which its caller applies one by one)."""
    stage_entries: bool = False
    enrollments: bool = False


@dataclass
class LoadedFacts:
    """The facts `load_facts` read, keyed by lead (and flow, where a fact belongs to one)."""

    statuses: dict[int, str] = field(default_factory=dict)
    profiles: dict[int, StoredLead] = field(default_factory=dict)
    deadlines: defaultdict[tuple[int, str], dict[str, datetime]] = field(default_factory=lambda: defaultdict(dict))
    assignments: defaultdict[tuple[int, str], dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    recent_sends: defaultdict[int, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    opened: defaultdict[tuple[int, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    clicked: defaultdict[tuple[int, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    events: defaultdict[int, list[EventFact]] = field(default_factory=lambda: defaultdict(list))
    stage_entries: defaultdict[int, list[Any]] = field(default_factory=lambda: defaultdict(list))
    """Rows with funnel, stage, position, entered_at, skipped, channel."""
    enrollments: defaultdict[int, list[Any]] = field(default_factory=lambda: defaultdict(list))
    """Rows with id, flow, kind, stage, run, status, entered_at, waiting_for."""

    def for_engine(self, lead_id: int, flow: str) -> LeadFacts:
        """The facts `domain.engine.advance` decides a lead's steps in one flow from.

        Deadlines, assignments and recent sends are handed over as the very objects
        stored here, so what one step of a batch starts or sends is seen by the next
        step of the same lead in the same batch.
        """
        lead = self.profiles[lead_id]
        key = (lead_id, flow)
        assignments = self.assignments[key]
        return LeadFacts(
            status=lead.status, email=lead.email, timezone=lead.timezone, owner=lead.owner,
            tags=frozenset(lead.tags), fields=lead.fields, deadlines=self.deadlines[key],
            assignments=assignments, held_out=assignments.get("holdout") == "held_out",
            opened=frozenset(self.opened.get(key, ())), clicked=frozenset(self.clicked.get(key, ())),
            events=self.events.get(lead_id, ()), recent_sends=self.recent_sends[lead_id],
        )


def load_facts(executor: Executor, lead_ids: Iterable[int], wanted: Wanted) -> LoadedFacts:
    """The parts of these leads' facts that `wanted` names, read `PART` leads at a time."""
    facts = LoadedFacts()
    for part in chunks(sorted(set(lead_ids)), PART):
        _load_part(executor, part, wanted, facts)
    return facts


def deadlines_of(executor: Executor, lead_ids: Iterable[int]) -> dict[tuple[int, str], dict[str, datetime]]:
    """(lead, flow) → deadline name → when it falls due, for every deadline these leads have."""
    return load_facts(executor, lead_ids, Wanted(deadlines=True)).deadlines


def _load_part(executor: Executor, ids: list[int], wanted: Wanted, facts: LoadedFacts) -> None:
    if isinstance(executor, Session):
        executor.flush()  # what the session's own execute would do first: pending ORM writes are seen
        connection = executor.connection()
    else:
        connection = executor
    statements = _statements(is_postgres(connection))

    def read(part: str, **params: Any) -> Any:
        return connection.execute(statements[part], {"ids": ids, **params})

    if wanted.profiles:
        for row in read("profiles"):
            facts.profiles[row.id] = StoredLead(row.email, row.status, row.first_name, row.timezone, row.owner, list(row.tags or []), dict(row.fields or {}))
            facts.statuses[row.id] = row.status
    elif wanted.statuses:
        facts.statuses.update((lead_id, status) for lead_id, status in read("statuses"))
    if wanted.deadlines:
        for lead_id, flow, name, due_at in read("deadlines"):
            facts.deadlines[(lead_id, flow)][name] = due_at
    if wanted.assignments:
        for lead_id, flow, name, value in read("assignments"):
            facts.assignments[(lead_id, flow)][name] = value
    if wanted.sends_since is not None:
        for lead_id, created in read("sends", since=wanted.sends_since):
            facts.recent_sends[lead_id].append(created)
    if wanted.engagement:
        # A click counts as an open too: a lead who clicked read the email, pixel or not.
        # Bot opens and clicks never set these columns, so they are not seen here either.
        for lead_id, flow, step_id, opened, clicked in read("engagement"):
            if opened is not None or clicked is not None:
                facts.opened[(lead_id, flow)].add(step_id)
            if clicked is not None:
                facts.clicked[(lead_id, flow)].add(step_id)
    if wanted.event_types:
        for event_id, lead_id, kind, properties, at in read("events", types=sorted(set(wanted.event_types))):
            if event_id not in wanted.events_left_out:
                facts.events[lead_id].append(EventFact(kind, properties or {}, at))
    if wanted.stage_entries:
        for row in read("stage_entries"):
            facts.stage_entries[row.lead_id].append(row)
    if wanted.enrollments:
        for row in read("enrollments"):
            facts.enrollments[row.lead_id].append(row)


@functools.cache
def _statements(pg: bool) -> dict[str, Select[Any]]:
    """Every part's query, built once per backend and run with the batch's ids as a parameter.

    Built for each call, these statements cost more than running them for the few leads of a
    simulation's pass or a sending batch (SQLAlchemy makes and keys each clause again), and
    a Core connection skips the ORM's result handling, which these plain columns do not need.
    """
    d = Delivery
    return {
        "profiles": select(Lead.id, Lead.email, Lead.status, Lead.first_name, Lead.timezone, Lead.owner, Lead.tags, Lead.fields).where(among_param(Lead.id, "ids", pg=pg)),
        "statuses": select(Lead.id, Lead.status).where(among_param(Lead.id, "ids", pg=pg)),
        "deadlines": select(Deadline.lead_id, Deadline.flow, Deadline.name, Deadline.due_at).where(among_param(Deadline.lead_id, "ids", pg=pg)),
        "assignments": select(Assignment.lead_id, Assignment.flow, Assignment.name, Assignment.value).where(among_param(Assignment.lead_id, "ids", pg=pg)),
        "sends": select(d.lead_id, d.created_at).where(
            among_param(d.lead_id, "ids", pg=pg), d.kind == "email", d.status.in_(COUNTED_SENDS), d.created_at > bindparam("since", type_=UTCDateTime()),
        ),
        "engagement": select(d.lead_id, d.flow, d.step_id, d.opened_at, d.clicked_at).where(
            among_param(d.lead_id, "ids", pg=pg), d.opened_at.is_not(None) | d.clicked_at.is_not(None),
        ),
        "events": select(Event.id, Event.lead_id, Event.type, Event.properties, Event.at).where(
            among_param(Event.lead_id, "ids", pg=pg), Event.type.in_(bindparam("types", expanding=True)),
        ),
        "stage_entries": select(
            StageEntry.lead_id, StageEntry.funnel, StageEntry.stage, StageEntry.position, StageEntry.entered_at, StageEntry.skipped, StageEntry.channel,
        ).where(among_param(StageEntry.lead_id, "ids", pg=pg)),
        "enrollments": select(
            Enrollment.id, Enrollment.lead_id, Enrollment.flow, Enrollment.kind, Enrollment.stage, Enrollment.run,
            Enrollment.status, Enrollment.entered_at, Enrollment.waiting_for,
        ).where(among_param(Enrollment.lead_id, "ids", pg=pg)),
    }
