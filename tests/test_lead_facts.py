"""`store.lead_facts`: the one loader of what the engine, the sending batch and event routing
know about a lead reads each part it is asked for, only those, and hands the scheduler objects
that a step's decisions change in place for the lead's next step in the same batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.orm import Session

from autofunnel.domain.conditions import EventFact
from autofunnel.domain.statuses import DeliveryStatus, EnrollmentStatus, LeadStatus
from autofunnel.store.db import Database
from autofunnel.store.lead_facts import PART, Wanted, deadlines_of, load_facts
from autofunnel.store.models import Assignment, Deadline, Delivery, Enrollment, Event, Lead, StageEntry

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def _lead(session: Session, email: str, **columns: object) -> int:
    return session.execute(
        insert(Lead).returning(Lead.id),
        [{"email": email, "status": LeadStatus.ACTIVE, "created_at": NOW, "updated_at": NOW, **columns}],
    ).scalar_one()


def _delivery(session: Session, lead_id: int, step_id: str, status: DeliveryStatus, created_at: datetime, **columns: object) -> None:
    session.execute(insert(Delivery), [{
        "lead_id": lead_id, "flow": "yoga", "stage": "lead", "step_id": step_id, "occurrence": 1, "kind": "email",
        "template": step_id, "to_address": "x@example.com", "status": status, "attempts": 0, "created_at": created_at, **columns,
    }])


def _stored(db: Database) -> tuple[int, int]:
    with db.transaction() as session:
        ann = _lead(session, "ann@example.com", first_name="Ann", timezone="Europe/Paris", owner="kim", tags=["vip"], fields={"plan": "pro"})
        bob = _lead(session, "bob@example.com", status=LeadStatus.UNSUBSCRIBED)
        session.execute(insert(Deadline), [{"lead_id": ann, "flow": "yoga", "name": "offer", "due_at": NOW + timedelta(days=2), "created_at": NOW}])
        session.execute(insert(Assignment), [
            {"lead_id": ann, "flow": "yoga", "name": "holdout", "value": "held_out", "assigned_at": NOW},
            {"lead_id": ann, "flow": "yoga", "name": "pitch", "value": "pitch_b", "assigned_at": NOW},
        ])
        _delivery(session, ann, "welcome", DeliveryStatus.SENT, NOW - timedelta(hours=2), opened_at=NOW - timedelta(hours=1))
        _delivery(session, ann, "tips", DeliveryStatus.SENT, NOW - timedelta(days=3), clicked_at=NOW - timedelta(days=2))
        _delivery(session, ann, "skipped", DeliveryStatus.SKIPPED, NOW - timedelta(hours=1))
        session.execute(insert(Event), [
            {"lead_id": ann, "key": "e1", "type": "purchase", "properties": {"product": "course"}, "at": NOW - timedelta(hours=3), "received_at": NOW},
            {"lead_id": ann, "key": "e2", "type": "page_view", "properties": {}, "at": NOW - timedelta(hours=3), "received_at": NOW},
        ])
        session.execute(insert(StageEntry), [
            {"lead_id": ann, "funnel": "yoga", "stage": "lead", "position": 0, "entered_at": NOW - timedelta(days=5), "skipped": False,
             "cohort_at": NOW - timedelta(days=5), "channel": "ads"},
        ])
        session.execute(insert(Enrollment), [
            {"lead_id": ann, "flow": "yoga", "kind": "funnel", "stage": "lead", "run": 1, "status": EnrollmentStatus.ACTIVE,
             "visits": {}, "history": [], "entered_at": NOW - timedelta(days=5)},
        ])
    return ann, bob


def test_each_part_asked_for_is_read_and_nothing_else(migrated_db: Database) -> None:
    ann, bob = _stored(migrated_db)
    with migrated_db.read() as session:
        nothing = load_facts(session, [ann, bob], Wanted())
        statuses = load_facts(session, [ann, bob], Wanted(statuses=True))
        every = load_facts(session, [ann, bob], Wanted(
            profiles=True, deadlines=True, assignments=True, sends_since=NOW - timedelta(days=1), engagement=True,
            event_types=("purchase",), stage_entries=True, enrollments=True,
        ))

    assert (nothing.statuses, nothing.profiles, dict(nothing.deadlines), dict(nothing.events)) == ({}, {}, {}, {})
    assert statuses.statuses == {ann: "active", bob: "unsubscribed"} and statuses.profiles == {}
    assert dict(statuses.enrollments) == {} and dict(statuses.stage_entries) == {}

    profile = every.profiles[ann]
    assert (profile.email, profile.first_name, profile.timezone, profile.owner, profile.tags, profile.fields) == (
        "ann@example.com", "Ann", "Europe/Paris", "kim", ["vip"], {"plan": "pro"}
    )
    assert every.statuses == {ann: "active", bob: "unsubscribed"}
    assert every.deadlines[(ann, "yoga")] == {"offer": NOW + timedelta(days=2)}
    assert every.assignments[(ann, "yoga")] == {"holdout": "held_out", "pitch": "pitch_b"}
    assert every.recent_sends[ann] == [NOW - timedelta(hours=2)], "a skipped email and one older than the cap's period do not count"
    assert every.opened[(ann, "yoga")] == {"welcome", "tips"}, "a click counts as an open"
    assert every.clicked[(ann, "yoga")] == {"tips"}
    assert every.events[ann] == [EventFact("purchase", {"product": "course"}, NOW - timedelta(hours=3))]
    assert [(row.stage, row.channel) for row in every.stage_entries[ann]] == [("lead", "ads")]
    assert [(row.flow, row.status) for row in every.enrollments[ann]] == [("yoga", "active")]
    assert bob not in every.events and bob not in every.enrollments


def test_the_engine_sees_what_a_step_before_it_changed(migrated_db: Database) -> None:
    ann, _ = _stored(migrated_db)
    with migrated_db.read() as session:
        facts = load_facts(session, [ann], Wanted(profiles=True, deadlines=True, assignments=True, sends_since=NOW - timedelta(days=1)))

    first = facts.for_engine(ann, "yoga")
    assert first.held_out and first.assignments["pitch"] == "pitch_b" and first.tags == frozenset({"vip"})
    facts.deadlines[(ann, "yoga")]["cart"] = NOW
    facts.recent_sends[ann].append(NOW)
    facts.profiles[ann].tags = ["vip", "buyer"]
    second = facts.for_engine(ann, "yoga")
    assert second.deadlines["cart"] == NOW and list(second.recent_sends) == [NOW - timedelta(hours=2), NOW]
    assert second.tags == frozenset({"vip", "buyer"})
    other_flow = facts.for_engine(ann, "cart")
    assert dict(other_flow.deadlines) == {} and not other_flow.held_out


def test_events_left_out_are_not_read_and_many_leads_are_read_in_parts(migrated_db: Database) -> None:
    ann, _ = _stored(migrated_db)
    with migrated_db.transaction() as session:
        many = [_lead(session, f"l{n}@example.com") for n in range(PART + 5)]
        for lead_id in (many[0], many[-1]):
            session.execute(insert(Deadline), [{"lead_id": lead_id, "flow": "yoga", "name": "offer", "due_at": NOW, "created_at": NOW}])
        purchase = session.execute(insert(Event).returning(Event.id), [
            {"lead_id": ann, "key": "e3", "type": "purchase", "properties": {}, "at": NOW, "received_at": NOW},
        ]).scalar_one()
    with migrated_db.read() as session:
        events = load_facts(session, [ann], Wanted(event_types=("purchase",), events_left_out=frozenset({purchase}))).events
        statuses = load_facts(session, many, Wanted(statuses=True)).statuses
        deadlines = deadlines_of(session, many)
    assert [fact.at for fact in events[ann]] == [NOW - timedelta(hours=3)]
    assert len(statuses) == PART + 5
    assert set(deadlines) == {(many[0], "yoga"), (many[-1], "yoga")}
