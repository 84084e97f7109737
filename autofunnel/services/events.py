"""Recording events: stored idempotently, then applied in time order, in one transaction.

A batch is checked whole first (inputs.parse_events), then every event is
inserted (`ON CONFLICT (key) DO NOTHING`: a resent event is a duplicate, not a
second purchase), and each new one is applied by its `at`: stage entries, which
end the earlier stage and cancel its queued emails; sequence starts, restarts
and stops; woken `wait: {event…}` steps; and status changes, which suppress
the lead for every funnel at once. Stage entries and enrollment rows are the
record of those decisions (the lead's timeline is drawn from them), so a busy
shop writes one row per change, not two. The transaction that records a purchase is
the one that cancels what it stops, so no claim can slip between them.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from autofunnel.domain.conditions import EventFact
from autofunnel.domain.engine import suppression_reason, wake_matches
from autofunnel.domain.statuses import EndCause, EnrollmentStatus, LeadStatus, SUPPRESSED
from autofunnel.domain.routing import (
    BOUNCE_STREAK_TYPES,
    ChangeStatus,
    Effect,
    EnterStage,
    Membership,
    SequenceRun,
    StartSequence,
    StopSequence,
    route_event,
)
from autofunnel.errors import NotFoundError
from autofunnel.services.enrollments import (
    cancel_queued_for_leads,
    end_enrollments,
    new_enrollment,
    parked_from_json,
    timeline_row,
    write_timeline,
)
from autofunnel.services.inputs import EventInput
from autofunnel.services.runtime import Runtime
from autofunnel.domain.report import LEAD_SPLITS
from autofunnel.services.tallies import count_events, count_stage_entries, entry_splits, file_entry_products, ids_in, regroup_buyers
from autofunnel.services.versions import current_version_ids
from autofunnel.store.lead_facts import Wanted, load_facts
from autofunnel.store.models import Enrollment, Event, Lead, StageEntry
from autofunnel.store.queries import among, among_param, bulk_insert, bulk_update, chunks, insert_returning, is_postgres


@dataclass(frozen=True)
class RecordResult:
    accepted: int
    duplicates: int


@dataclass
class _Lead:
    id: int
    status: str
    memberships: dict[str, Membership] = field(default_factory=dict)
    stage_enrollments: dict[str, list[int | dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    runs: dict[str, tuple[SequenceRun, int | dict[str, Any]]] = field(default_factory=dict)
    active: set[int] = field(default_factory=set)
    pending: list[dict[str, Any]] = field(default_factory=list)
    max_run: dict[str, int] = field(default_factory=dict)
    parked: list[tuple[int, Any]] = field(default_factory=list)
    history: list[EventFact] = field(default_factory=list)
    entries: dict[str, dict[int, _Entered]] = field(default_factory=lambda: defaultdict(dict))
    """Per funnel, the stage positions reached: when, and whether jumped over; for the report's times."""
    channels: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entered:
    at: datetime
    skipped: bool


def record_events(rt: Runtime, items: list[EventInput]) -> RecordResult:
    """Store a batch of events and apply the new ones; all or nothing.

    An id given twice in one batch is one event, the first one sent, and the
    rest count as duplicates, as they would in later batches: only that first
    event is stored, and only it is applied.
    """
    now = rt.clock.now()
    with rt.db.transaction() as session:
        lead_of, created = _resolve_leads(session, items, now)
        rows = [
            {
                "lead_id": lead_of[index], "key": item.key or f"gen:{uuid.uuid4().hex}", "type": item.type,
                "properties": item.properties, "at": item.at, "received_at": now,
            }
            for index, item in enumerate(items)
        ]
        by_key: dict[str, dict[str, Any]] = {}
        for row in rows:
            by_key.setdefault(row["key"], row)
        bought: dict[int, set[str | None]] = defaultdict(set)
        for row in by_key.values():
            if row["type"] == "purchase":
                bought[row["lead_id"]].add(row["properties"].get("product"))
        if bought:
            # A purchase already stored adds no product its lead's set lacks, so the batch's are enough.
            regroup_buyers(session, bought)
        inserted = insert_returning(session, Event.__table__, list(by_key.values()), ("id", "key"), conflict=("key",))
        fresh = sorted(((by_key[key], event_id) for event_id, key in inserted), key=lambda pair: (pair[0]["at"], pair[1]))
        if fresh:
            _apply(session, rt, fresh, created, now)
            counted = [event_id for row, event_id in fresh if row["type"] in ("purchase", "refund", "unsubscribed")]
            if counted:
                count_events(session, ids_in(counted), batch=frozenset(row["type"] for row, _ in fresh))
        return RecordResult(len(inserted), len(rows) - len(inserted))


def _locked(query: Select[Any]) -> Select[Any]:
    """Lock the batch's leads (in id order) before anything refers to them.

    On PostgreSQL two batches about the same lead then apply one after the other,
    never both from the same starting point; taking the lock first, before the
    event rows' foreign keys take their share locks, is what keeps two such
    batches from deadlocking. SQLite's write transaction serializes them anyway.
    """
    return query.order_by(Lead.id).with_for_update(key_share=True)


def _resolve_leads(session: Session, items: list[EventInput], now: datetime) -> tuple[list[int], set[int]]:
    """The lead of each event, and the ids of the leads this transaction created: an unknown
    email becomes a new active lead, an unknown id is an error."""
    emails = sorted({item.email for item in items if item.email})
    ids = sorted({item.lead_id for item in items if item.lead_id})
    by_email: dict[str, int] = {}
    by_emails, by_ids = _lead_statements(is_postgres(session))
    connection = session.connection()  # the batch's first statements: nothing to flush, and Core's path is ~55 µs shorter
    for part in chunks(emails, 500):
        by_email.update(connection.execute(by_emails, {"emails": list(part)}).all())
    known_ids: set[int] = set()
    for part in chunks(ids, 500):
        known_ids.update(connection.scalars(by_ids, {"ids": list(part)}))
    for index, item in enumerate(items):
        if item.lead_id and item.lead_id not in known_ids:
            prefix = f"[{index}]." if len(items) > 1 else ""
            raise NotFoundError(f"no lead with id {item.lead_id}", field=f"{prefix}lead_id", code="unknown_lead")
    missing = [email for email in emails if email not in by_email]
    created_ids: set[int] = set()
    if missing:
        created = insert_returning(
            session, Lead.__table__,
            [{"email": email, "status": LeadStatus.ACTIVE, "created_at": now, "updated_at": now, "status_changed_at": now} for email in missing],
            ("email", "id"), conflict=("email",),
        )
        by_email.update((email, lead_id) for email, lead_id in created)
        created_ids.update(lead_id for _, lead_id in created)
        raced = [email for email in missing if email not in by_email]
        for part in chunks(raced, 500):
            by_email.update(session.execute(select(Lead.email, Lead.id).where(among(session, Lead.email, part))).all())
    return [item.lead_id if item.lead_id else by_email[item.email or ""] for item in items], created_ids


@functools.cache
def _lead_statements(pg: bool) -> tuple[Select[Any], Select[Any]]:
    """The batch's leads by email and by id, locked (`_locked`); built once per backend, as every
    batch of events runs one of them."""
    return (
        _locked(select(Lead.email, Lead.id).where(among_param(Lead.email, "emails", pg=pg, text=True))),
        _locked(select(Lead.id).where(among_param(Lead.id, "ids", pg=pg))),
    )


def _load(session: Session, rt: Runtime, fresh: list[tuple[dict[str, Any], int]], created: set[int]) -> dict[int, _Lead]:
    """The state of the batch's leads that applying its events starts from.

    A lead this transaction created has nothing stored about it but this batch's
    events (no other transaction can see it yet), so it is not looked up: a
    busy shop's batch is mostly new shoppers, and their four lookups took
    18 of a batch's 80 ms on PostgreSQL (900 new shoppers of 1000; 4 ms without).
    """
    stop_types = sorted({m.event for seq in rt.project.sequences for m in seq.stop_on})
    soft_bounced = {row["lead_id"] for row, _ in fresh if row["type"] == "bounced" and row["properties"].get("kind") == "soft"} - created
    leads: dict[int, _Lead] = {}
    for row, _ in fresh:
        lead_id = row["lead_id"]
        if lead_id in created:
            lead = leads.get(lead_id)
            if lead is None:
                lead = leads[lead_id] = _Lead(lead_id, LeadStatus.ACTIVE)
            if row["type"] in stop_types:
                lead.history.append(EventFact(row["type"], row["properties"], row["at"]))
    lead_ids = sorted({row["lead_id"] for row, _ in fresh} - created)
    facts = load_facts(session, lead_ids, Wanted(statuses=True, stage_entries=True, enrollments=True, event_types=stop_types))
    for lead_id, status in facts.statuses.items():
        leads[lead_id] = _Lead(lead_id, status, history=facts.events.get(lead_id, []))
    for lead_id, entries in facts.stage_entries.items():
        _place_in_funnels(leads[lead_id], entries)
    for lead_id, enrollments in facts.enrollments.items():
        _place_in_flows(leads[lead_id], enrollments)
    if soft_bounced:
        _load_bounce_history(session, leads, sorted(soft_bounced), {event_id for _, event_id in fresh}, set(stop_types))
    return leads


def _place_in_funnels(lead: _Lead, entries: list[Any]) -> None:
    """Where the lead stands in each funnel, from its stage entries."""
    by_funnel: dict[str, list[Any]] = defaultdict(list)
    for row in entries:
        by_funnel[row.funnel].append(row)
        lead.entries[row.funnel][row.position] = _Entered(row.entered_at, row.skipped)
        if row.position == 0:
            lead.channels[row.funnel] = row.channel
    for funnel, rows in by_funnel.items():
        entered = [r for r in rows if not r.skipped]
        if not entered:
            continue
        current = max(entered, key=lambda r: r.position)
        first = min(rows, key=lambda r: r.position)
        lead.memberships[funnel] = Membership(funnel, first.entered_at, current.stage, frozenset(r.stage for r in rows))


def _place_in_flows(lead: _Lead, enrollments: list[Any]) -> None:
    """The lead's active stage enrollments and sequence runs, and what its parked steps wait for."""
    for row in enrollments:
        if row.kind == "sequence":
            lead.max_run[row.flow] = max(lead.max_run.get(row.flow, 0), row.run)
        if row.status != EnrollmentStatus.ACTIVE:
            continue
        lead.active.add(row.id)
        if row.kind == "funnel":
            lead.stage_enrollments[row.flow].append(row.id)
        else:
            lead.runs[row.flow] = (SequenceRun(row.flow, row.run, row.entered_at), row.id)
        parked = parked_from_json(row.waiting_for)
        if parked is not None and parked.kind in ("event", "confirm"):
            lead.parked.append((row.id, parked))


def _load_bounce_history(session: Session, leads: dict[int, _Lead], lead_ids: list[int], fresh_ids: set[int], loaded: set[str]) -> None:
    """What a soft bounce is counted against (SOFT_BOUNCES_AS_HARD): the lead's stored bounces,
    deliveries, opens and clicks, read only for leads this batch soft-bounces; the batch's own
    events are left out, since applying them adds them to the history one by one."""
    types = [kind for kind in BOUNCE_STREAK_TYPES if kind not in loaded]
    found = load_facts(session, lead_ids, Wanted(event_types=types, events_left_out=frozenset(fresh_ids)))
    for lead_id, history in found.events.items():
        leads[lead_id].history.extend(history)


class _Changes:
    """What applying a batch of events will write, gathered first and written in bulk.

    An enrollment is referred to by its id when it is already stored, or by its
    pending row (a dict) when an earlier event of the same batch created it, so
    a cart started and bought within one batch ends stopped before it is written.
    """

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.new_rows: list[dict[str, Any]] = []
        self.ends: dict[tuple[str, EndCause, str], list[int]] = defaultdict(list)
        self.statuses: dict[int, str] = {}
        self.suppressed: dict[str, list[int]] = defaultdict(list)
        self.stage_entries: list[dict[str, Any]] = []
        self.wake: set[int] = set()
        self.timeline: list[dict[str, Any]] = []

    def end(self, lead: _Lead, ref: int | dict[str, Any], status: str, cause: EndCause, reason: str) -> None:
        if isinstance(ref, dict):
            if ref["status"] == EnrollmentStatus.ACTIVE:
                ref.update(status=status, due_at=None, ended_at=self.now, end_cause=cause, end_reason=reason[:200])
            return
        if ref in lead.active:
            lead.active.discard(ref)
            self.ends[(status, cause, reason)].append(ref)
        lead.parked = [(eid, p) for eid, p in lead.parked if eid != ref]

    def write(self, session: Session) -> None:
        if self.new_rows:
            bulk_insert(session, Enrollment.__table__, self.new_rows)
        for reason, lead_ids in self.suppressed.items():
            cancel_queued_for_leads(session, lead_ids, reason)
        for (status, cause, reason), ids in self.ends.items():
            end_enrollments(session, ids, status, cause, reason, self.now)
        bulk_update(session, Lead.__table__, [
            {"id": lead_id, "status": status, "status_changed_at": self.now, "updated_at": self.now} for lead_id, status in self.statuses.items()
        ])
        if self.stage_entries:
            timed = [row for row in self.stage_entries if row["since_previous_s"] is not None or row["since_first_s"] is not None]
            splits = entry_splits(session, {row["lead_id"] for row in timed}) if timed else {}
            for row in self.stage_entries:
                row.update(dict.fromkeys(LEAD_SPLITS))
            for row in timed:
                row.update(splits.get(row["lead_id"], {}))
            entered = insert_returning(session, StageEntry.__table__, self.stage_entries, ("id",), conflict=("lead_id", "funnel", "stage"))
            count_stage_entries(session, ids_in([row.id for row in entered]))
            if timed:
                file_entry_products(session, StageEntry.id, [row.id for row in entered])
        for part in chunks(sorted(self.wake), 500):
            session.execute(update(Enrollment).where(among(session, Enrollment.id, part), Enrollment.status == EnrollmentStatus.ACTIVE).values(due_at=self.now))
        write_timeline(session, self.timeline)


def _apply(session: Session, rt: Runtime, fresh: list[tuple[dict[str, Any], int]], created: set[int], now: datetime) -> None:
    leads = _load(session, rt, fresh, created)
    versions = current_version_ids(session, list(rt.project.flows.values()), now)
    changes = _Changes(now)
    for row, event_id in fresh:
        lead = leads[row["lead_id"]]
        fact = EventFact(row["type"], row["properties"], row["at"])
        active_runs = {slug: run for slug, (run, _) in lead.runs.items()}
        for effect in route_event(rt.project, lead.status, lead.memberships, active_runs, lead.history, fact):
            _apply_effect(rt, lead, effect, event_id, versions, changes)
        for enrollment_id, parked in list(lead.parked):
            if wake_matches(parked, fact.type, fact.properties, fact.at) or (parked.kind == "confirm" and lead.status == LeadStatus.ACTIVE):
                changes.wake.add(enrollment_id)
                lead.parked.remove((enrollment_id, parked))
                changes.timeline.append(timeline_row(lead.id, now, "woken", f"{fact.type} arrived", detail={"enrollment": enrollment_id}))
        lead.history.append(fact)
    changes.write(session)


def _apply_effect(rt: Runtime, lead: _Lead, effect: Effect, event_id: int, versions: dict[str, int], changes: _Changes) -> None:
    now = changes.now
    match effect:
        case ChangeStatus(status=status, reason=reason):
            lead.status = status
            changes.statuses[lead.id] = status
            changes.timeline.append(timeline_row(lead.id, now, "status", f"{status}: {reason}"))
            if status in SUPPRESSED:
                for ref in [*lead.active, *lead.pending]:
                    changes.end(lead, ref, EnrollmentStatus.EXITED, EndCause.SUPPRESSED, suppression_reason(status))
                changes.suppressed[f"suppressed: lead {status}"].append(lead.id)
                lead.stage_enrollments.clear()
                lead.runs.clear()
                lead.parked.clear()
        case EnterStage(funnel=funnel, stage=stage, position=position, skipped=skipped, at=at):
            membership = lead.memberships[funnel]
            reached = lead.entries[funnel]
            for name, pos, was_skipped in [*((n, p, True) for n, p in skipped), (stage, position, False)]:
                changes.stage_entries.append({
                    "lead_id": lead.id, "funnel": funnel, "stage": name, "position": pos, "entered_at": at, "skipped": was_skipped,
                    "cohort_at": membership.entered_at, "channel": lead.channels.get(funnel),
                    **stage_times(at, was_skipped, reached.get(pos - 1), membership.entered_at),
                })
                reached[pos] = _Entered(at, was_skipped)
            for ref in lead.stage_enrollments.pop(funnel, []):
                changes.end(lead, ref, EnrollmentStatus.ENDED, EndCause.MOVED_ON, f"entered stage {stage!r}")
            row = new_enrollment(lead.id, rt.project.flows[funnel], stage, run=1, at=at, now=now, version_id=versions.get(funnel), event_id=event_id)
            _add(lead, row, changes)
            lead.stage_enrollments[funnel].append(row)
            lead.memberships[funnel] = Membership(funnel, membership.entered_at, stage, membership.reached | {stage, *(n for n, _ in skipped)})
        case StartSequence(sequence=slug, at=at, restarting=restarting):
            if restarting is not None:
                _, old = lead.runs.pop(slug)
                changes.end(lead, old, EnrollmentStatus.STOPPED, EndCause.STOPPED, "restarted by a new start event")
            run = lead.max_run.get(slug, 0) + 1
            lead.max_run[slug] = run
            row = new_enrollment(lead.id, rt.project.flows[slug], "", run=run, at=at, now=now, version_id=versions.get(slug), event_id=event_id)
            _add(lead, row, changes)
            lead.runs[slug] = (SequenceRun(slug, run, at), row)
        case StopSequence(run=run, reason=reason):
            _, ref = lead.runs.pop(run.sequence)
            changes.end(lead, ref, EnrollmentStatus.STOPPED, EndCause.STOPPED, reason)


def stage_times(at: datetime, skipped: bool, previous: _Entered | None, first_at: datetime) -> dict[str, float | None]:
    """The report's times of a stage entry, to the millisecond: from the stage before (when neither was
    jumped over) and from the first. Milliseconds, so the upgrade that computed them in SQL agrees."""
    if skipped:
        return {"since_previous_s": None, "since_first_s": None}
    since_previous = None if previous is None or previous.skipped else round((at - previous.at).total_seconds(), 3)
    return {"since_previous_s": since_previous, "since_first_s": round((at - first_at).total_seconds(), 3)}


def _add(lead: _Lead, row: dict[str, Any], changes: _Changes) -> None:
    changes.new_rows.append(row)
    if row["status"] == EnrollmentStatus.ACTIVE:
        lead.pending.append(row)
