"""The bulk writers store exactly what SQLAlchemy's own inserts store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DataError, IntegrityError

from autofunnel.store.db import Database
from autofunnel.store.models import CohortTally, Deadline, Lead, TimelineEntry
from autofunnel.store.queries import KEY_CHECKS_WORTH_A_SWITCH, bulk_insert, bulk_update, insert_returning

WHEN = datetime(2026, 3, 2, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))


def lead(db: Database, email: str) -> int:
    with db.transaction() as session:
        return session.execute(
            insert(Lead).returning(Lead.id),
            [{"email": email, "status": "active", "created_at": WHEN, "updated_at": WHEN}],
        ).scalar_one()


def test_bulk_insert_matches_core(migrated_db: Database) -> None:
    lead_id = lead(migrated_db, "a@b.example")
    row = {"lead_id": lead_id, "at": WHEN, "flow": "f", "stage": None, "step_id": "s", "decision": "d", "reason": "ünï", "detail": {"k": [1, "x"]}}
    with migrated_db.transaction() as session:
        session.execute(insert(TimelineEntry.__table__), [row])
        bulk_insert(session, TimelineEntry.__table__, [row])
    with migrated_db.read() as session:
        raw = session.execute(text("SELECT lead_id, at, flow, stage, step_id, decision, reason, detail FROM timeline ORDER BY id")).all()
        typed = session.execute(select(TimelineEntry.at, TimelineEntry.detail)).all()
    assert raw[0] == raw[1]
    assert typed[0] == typed[1] == (WHEN.astimezone(UTC), {"k": [1, "x"]})


def test_insert_returning_skips_conflicts(migrated_db: Database) -> None:
    lead_id = lead(migrated_db, "c@d.example")
    rows = [{"lead_id": lead_id, "flow": "f", "name": name, "due_at": WHEN, "created_at": WHEN} for name in ("a", "b")]
    with migrated_db.transaction() as session:
        first = insert_returning(session, Deadline.__table__, rows, ("name",), conflict=("lead_id", "flow", "name"))
        again = insert_returning(session, Deadline.__table__, rows, ("name",), conflict=("lead_id", "flow", "name"))
    assert sorted(r[0] for r in first) == ["a", "b"]
    assert again == []


def test_bulk_insert_takes_whole_numbers_among_fractions_and_fills_server_defaults(migrated_db: Database) -> None:
    """PostgreSQL's arrays hold one Python type; a column mixing ints and floats still goes in whole."""
    day = WHEN.date()
    rows = [{"funnel": "f", "cohort_day": day, "figure": "revenue", "n": 1, "amount": amount} for amount in (2, 2.5, 0)]
    with migrated_db.transaction() as session:
        bulk_insert(session, CohortTally.__table__, rows)
    with migrated_db.read() as session:
        stored = session.execute(select(CohortTally.amount, CohortTally.channel, CohortTally.folded).order_by(CohortTally.id)).all()
    assert stored == [(2.0, "", False), (2.5, "", False), (0.0, "", False)]


def test_bulk_insert_stores_shared_moments_as_core_does(migrated_db: Database) -> None:
    """Each distinct moment of a column is converted once; the same instant in two zones is one moment."""
    lead_id = lead(migrated_db, "e@f.example")
    moments = [WHEN, WHEN.astimezone(UTC), WHEN + timedelta(microseconds=1), WHEN]
    rows = [{"lead_id": lead_id, "at": moment, "decision": "d"} for moment in moments]
    with migrated_db.transaction() as session:
        session.execute(insert(TimelineEntry.__table__), rows)
        bulk_insert(session, TimelineEntry.__table__, rows)
    with migrated_db.read() as session:
        raw = session.execute(text("SELECT at FROM timeline ORDER BY id")).scalars().all()
    assert raw[:4] == raw[4:]
    assert raw[0] == raw[1] == raw[3] != raw[2]


@pytest.mark.postgres
def test_a_large_insert_still_checks_its_foreign_keys_and_keeps_the_plan_mode(migrated_db: Database) -> None:
    """The insert lets PostgreSQL reuse its plan of the key checks, and only for that insert."""
    lead_id = lead(migrated_db, "g@h.example")
    rows = [{"lead_id": lead_id, "at": WHEN, "decision": "d"} for _ in range(KEY_CHECKS_WORTH_A_SWITCH)]
    with migrated_db.transaction() as session:
        bulk_insert(session, TimelineEntry.__table__, rows)
        assert session.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
        session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        bulk_insert(session, TimelineEntry.__table__, rows)
        assert session.execute(text("SHOW plan_cache_mode")).scalar() == "force_generic_plan"
    with pytest.raises(IntegrityError):
        with migrated_db.transaction() as session:
            bulk_insert(session, TimelineEntry.__table__, [*rows, {"lead_id": lead_id + 1, "at": WHEN, "decision": "d"}])
    with migrated_db.transaction() as session:
        assert session.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
        assert session.scalar(select(func.count()).select_from(TimelineEntry)) == 2 * KEY_CHECKS_WORTH_A_SWITCH


def test_columns_that_hold_one_value_for_every_row_are_stored_in_every_row(migrated_db: Database) -> None:
    lead_id = lead(migrated_db, "i@j.example")
    same = {"lead_id": lead_id, "at": WHEN, "flow": None, "decision": "d", "detail": {"k": [1]}}
    with migrated_db.transaction() as session:
        bulk_insert(session, TimelineEntry.__table__, [same, same, same])
        bulk_insert(session, TimelineEntry.__table__, [{**same, "detail": None, "flow": "f"}, {**same, "detail": {"k": [2]}, "flow": None}])
        written = insert_returning(session, Deadline.__table__, [{"lead_id": lead_id, "flow": "f", "name": "n", "due_at": WHEN, "created_at": WHEN}] * 2, ("name",), conflict=("lead_id", "flow", "name"))
    with migrated_db.read() as session:
        stored = session.execute(select(TimelineEntry.lead_id, TimelineEntry.at, TimelineEntry.flow, TimelineEntry.detail).order_by(TimelineEntry.id)).all()
    assert stored == [(lead_id, WHEN, None, {"k": [1]})] * 3 + [(lead_id, WHEN, "f", None), (lead_id, WHEN, None, {"k": [2]})]
    assert [row.name for row in written] == ["n"]


@pytest.mark.postgres
def test_an_over_long_text_is_refused_not_cut(migrated_db: Database) -> None:
    lead_id = lead(migrated_db, "k@l.example")
    rows = [{"lead_id": lead_id, "at": WHEN, "decision": decision} for decision in ("d", "x" * 40)]
    with pytest.raises(DataError):
        with migrated_db.transaction() as session:
            bulk_insert(session, TimelineEntry.__table__, rows)
    with pytest.raises(DataError):
        with migrated_db.transaction() as session:
            bulk_insert(session, TimelineEntry.__table__, rows[1:])


def test_bulk_update_gives_each_row_its_own_values_as_core_does(migrated_db: Database) -> None:
    """Per-row values, one shared value, JSON, NULLs and a single row: what SQLAlchemy's own UPDATE stores."""
    ids = [lead(migrated_db, f"u{number}@v.example") for number in range(4)]
    later = WHEN + timedelta(days=1)
    changes = [
        {"id": ids[0], "tags": ["a"], "fields": {"plan": "pro", "n": 2}, "timezone": None, "updated_at": later},
        {"id": ids[1], "tags": [], "fields": {}, "timezone": "Europe/Berlin", "updated_at": later},
        {"id": ids[2], "tags": ["b", "ü"], "fields": {"x": None}, "timezone": None, "updated_at": later},
    ]
    with migrated_db.transaction() as session:
        bulk_update(session, Lead.__table__, changes)
        bulk_update(session, Lead.__table__, [{"id": ids[3], "status": "unsubscribed"}])
    with migrated_db.read() as session:
        stored = session.execute(select(Lead.id, Lead.tags, Lead.fields, Lead.timezone, Lead.updated_at, Lead.status).order_by(Lead.id)).all()
    assert stored == [
        (ids[0], ["a"], {"plan": "pro", "n": 2}, None, later, "active"),
        (ids[1], [], {}, "Europe/Berlin", later, "active"),
        (ids[2], ["b", "ü"], {"x": None}, None, later, "active"),
        (ids[3], [], {}, None, WHEN, "unsubscribed"),
    ]


def test_a_bulk_update_naming_a_row_twice_is_refused(migrated_db: Database) -> None:
    lead_id = lead(migrated_db, "w@x.example")
    with pytest.raises(ValueError):
        with migrated_db.transaction() as session:
            bulk_update(session, Lead.__table__, [{"id": lead_id, "status": "bounced"}, {"id": lead_id, "status": "active"}])


def test_json_values_python_finds_equal_are_stored_each_as_written(migrated_db: Database) -> None:
    """True == 1 and 10 == 10.0 in Python, not in JSON: rows whose JSON differs are not one value."""
    lead_id = lead(migrated_db, "y@z.example")
    details = [{"gift": True, "amount": 10}, {"gift": 1, "amount": 10.0}]
    rows = [{"lead_id": lead_id, "at": WHEN, "decision": "d", "detail": detail} for detail in details]
    with migrated_db.transaction() as session:
        bulk_insert(session, TimelineEntry.__table__, rows)
    with migrated_db.read() as session:
        stored = session.scalars(select(TimelineEntry.detail).order_by(TimelineEntry.id)).all()
    assert [json.dumps(detail, sort_keys=True) for detail in stored] == [json.dumps(detail, sort_keys=True) for detail in details]
