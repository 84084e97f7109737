"""The schema comes only from the migrations, and the models agree with them, on this run's backend."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import bindparam, func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from autofunnel.errors import NotMigratedError, UnknownRevisionError
from autofunnel.services.database import database_status, open_database, upgrade_database
from autofunnel.store.db import Database, normalize_url
from autofunnel.store.migrate import (
    alembic_config,
    current_revision,
    downgrade,
    head_revision,
    pending,
    upgrade,
)
from autofunnel.store.models import ApiKey, Base, Event, Lead, TimelineEntry, on_backend
from autofunnel.store.types import UTCDateTime

pytestmark = pytest.mark.db

TABLES = {
    "leads",
    "events",
    "enrollments",
    "deliveries",
    "deadlines",
    "stage_entries",
    "assignments",
    "timeline",
    "api_keys",
    "users",
    "spend",
    "cohort_tallies",
}
MOMENT = datetime(2025, 3, 30, 1, 30, tzinfo=UTC)


def _tables(db: Database) -> set[str]:
    with db.engine.connect() as connection:
        return set(inspect(connection).get_table_names())


def _lead(email: str = "ana@shop.example") -> Lead:
    return Lead(email=email, status="active", created_at=MOMENT, updated_at=MOMENT)


def test_upgrade_from_empty_reaches_head(database_url: str) -> None:
    assert current_revision(database_url) is None
    assert pending(database_url)

    upgrade(database_url)

    assert current_revision(database_url) == head_revision() is not None
    assert not pending(database_url)
    db = Database.from_url(database_url)
    try:
        assert _tables(db) >= TABLES
    finally:
        db.dispose()


def test_upgrade_twice_is_harmless(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)
    assert upgrade_database(database_url).up_to_date
    assert current_revision(database_url) == head_revision()


def test_models_match_migrations(migrated_db: Database) -> None:
    with migrated_db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True, "include_object": on_backend(connection.dialect.name)}
        )
        assert compare_metadata(context, Base.metadata) == []


def test_autogenerate_through_env_finds_nothing_to_do(database_url: str) -> None:
    """The same check a developer's `alembic check` runs, through env.py's own connection."""
    upgrade(database_url)
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", normalize_url(database_url).replace("%", "%%"))
    command.check(config)


def test_offline_sql_contains_the_partial_index() -> None:
    out = io.StringIO()
    config = alembic_config()
    config.stdout = out
    config.output_buffer = out
    config.set_main_option("sqlalchemy.url", "postgresql://")
    command.upgrade(config, "head", sql=True)
    sql = out.getvalue()
    assert "CREATE TABLE leads" in sql
    assert "CREATE INDEX ix_enrollments_due ON enrollments (due_at) WHERE status = 'active'" in sql


@pytest.mark.parametrize(
    ("table", "index", "status"),
    [("enrollments", "ix_enrollments_due", "active"), ("deliveries", "ix_deliveries_in_flight", "sending")],
)
def test_partial_indexes_exist(migrated_db: Database, table: str, index: str, status: str) -> None:
    with migrated_db.engine.connect() as connection:
        indexes = {item["name"]: item for item in inspect(connection).get_indexes(table)}
    assert index in indexes
    options = indexes[index]["dialect_options"]
    where = options.get(f"{migrated_db.backend}_where")
    assert where is not None, options
    assert f"'{status}'" in str(where)


def test_downgrade_to_base_then_upgrade_again(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    db = Database.from_url(database_url)
    try:
        assert current_revision(database_url) is None
        assert not (TABLES & _tables(db))
        upgrade(database_url)
        assert _tables(db) >= TABLES
        assert current_revision(database_url) == head_revision()
    finally:
        db.dispose()


def test_utc_datetime_round_trips_an_aware_moment(migrated_db: Database) -> None:
    paris_summer = timezone(timedelta(hours=2))
    written = datetime(2025, 7, 1, 9, 15, 30, 123456, tzinfo=paris_summer)
    with migrated_db.transaction() as session:
        session.add(ApiKey(name="k", prefix="af_x", key_hash="h" * 64, created_at=written))

    with migrated_db.read() as session:
        read = session.scalars(select(ApiKey.created_at)).one()
        stored = session.execute(text("SELECT created_at FROM api_keys")).scalar_one()
    assert read == written
    assert read.tzinfo is UTC
    assert read.hour == 7
    if migrated_db.backend == "sqlite":
        assert str(stored).startswith("2025-07-01 07:15:30.123456")
    else:
        assert stored == written


def test_utc_datetime_refuses_a_naive_moment(migrated_db: Database) -> None:
    with pytest.raises(StatementError) as failure, migrated_db.transaction() as session:
        session.add(ApiKey(name="k", prefix="af_x", key_hash="h" * 64, created_at=datetime(2025, 7, 1, 9, 15)))
        session.flush()
    assert isinstance(failure.value.orig, ValueError)
    with migrated_db.read() as session:
        assert session.scalars(select(ApiKey)).all() == []


def test_comparisons_bind_through_utc(migrated_db: Database) -> None:
    """A query bound with a non-UTC moment finds rows stored in UTC (SQLite compares text)."""
    with migrated_db.transaction() as session:
        session.add(ApiKey(name="k", prefix="af_x", key_hash="h" * 64, created_at=MOMENT))
    later_elsewhere = (MOMENT + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-5)))
    with migrated_db.read() as session:
        assert session.scalars(select(ApiKey.id).where(ApiKey.created_at < later_elsewhere)).all() != []


def test_server_defaults_fill_core_inserts(migrated_db: Database) -> None:
    """Benchmarks and bulk imports insert with plain SQL; the defaults that matter are in the database."""
    with migrated_db.transaction() as session:
        session.execute(
            text(
                "INSERT INTO leads (email, status, created_at, updated_at) "
                "VALUES ('raw@shop.example', 'active', :at, :at)"
            ).bindparams(bindparam("at", type_=UTCDateTime())),
            {"at": MOMENT},
        )
    with migrated_db.read() as session:
        lead = session.scalars(select(Lead)).one()
    assert (lead.fields, lead.tags, lead.source) == ({}, [], None)


def test_json_none_is_sql_null(migrated_db: Database) -> None:
    with migrated_db.transaction() as session:
        lead = _lead()
        session.add(lead)
        session.flush()
        session.add(TimelineEntry(lead_id=lead.id, at=MOMENT, decision="sent", detail=None))
    with migrated_db.read() as session:
        assert session.scalars(select(TimelineEntry.id).where(TimelineEntry.detail.is_(None))).all() != []


def test_foreign_keys_and_checks_are_enforced(migrated_db: Database) -> None:
    with pytest.raises(IntegrityError), migrated_db.transaction() as session:
        session.add(Event(lead_id=999, key="e1", type="purchase", at=MOMENT, received_at=MOMENT))
    with pytest.raises(IntegrityError), migrated_db.transaction() as session:
        session.add(Lead(email="x@shop.example", status="happy", created_at=MOMENT, updated_at=MOMENT))


def test_transaction_rolls_back_when_the_block_raises(migrated_db: Database) -> None:
    with pytest.raises(RuntimeError), migrated_db.transaction() as session:
        session.add(_lead())
        session.flush()
        raise RuntimeError("boom")
    with migrated_db.read() as session:
        assert session.scalars(select(Lead)).all() == []


def test_open_database_refuses_an_unmigrated_database(database_url: str) -> None:
    with pytest.raises(NotMigratedError):
        open_database(database_url)
    assert not database_status(database_url).up_to_date


def test_open_database_refuses_a_newer_schema(migrated_db: Database, database_url: str) -> None:
    with migrated_db.transaction() as session:
        session.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(UnknownRevisionError):
        open_database(database_url)
    with pytest.raises(UnknownRevisionError):
        upgrade_database(database_url)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("sqlite:////abs/path.db", "sqlite:////abs/path.db"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


def test_read_then_write_units_in_parallel_never_fail_with_locked(migrated_db: Database, database_url: str) -> None:
    """Separate engines stand for separate processes: each unit reads, then writes.

    With SQLite's default deferred BEGIN, the second writer's snapshot goes stale
    and it fails at once with "database is locked"; units of work begin
    IMMEDIATE, so they wait their turn instead.
    """
    databases = [Database.from_url(database_url) for _ in range(4)]
    errors: list[BaseException] = []

    def work(db: Database, worker: int) -> None:
        try:
            for round_ in range(10):
                with db.transaction() as session:
                    seen = len(session.scalars(select(ApiKey.id)).all())
                    name = f"{worker}-{round_}-{seen}"
                    session.add(ApiKey(name=name, prefix="af_x", key_hash=f"{worker}-{round_}", created_at=MOMENT))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(db, n)) for n, db in enumerate(databases)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for db in databases:
            db.dispose()
    assert errors == []
    with migrated_db.read() as session:
        assert len(session.scalars(select(ApiKey.id)).all()) == 40


def test_the_end_cause_upgrade_reads_the_causes_from_the_words_they_were_written_with(database_url: str) -> None:
    """0016_end_cause gives every ended enrollment stored before it the cause its status and
    end_reason stood for; the sending rule and the lead view read only the cause from then on."""
    upgrade(database_url, "0015_refund_tallies")
    ended = [
        ("done", "all steps done", "finished"),
        ("done", "no steps", "finished"),
        ("ended", "entered stage 'tripwire'", "moved_on"),
        ("ended", "stage removed from the project", "removed"),
        ("ended", "funnel or sequence removed from the project", "removed"),
        ("stopped", "purchase", "stopped"),
        ("exited", "lead unsubscribed", "suppressed"),
        ("exited", "lead erased", "suppressed"),
        ("exited", "exit step", "exit_step"),
        ("exited", "more than 100 steps without a wait: a goto loop", "loop"),
        ("active", None, None),
    ]
    db = Database.from_url(database_url)
    try:
        with db.engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO leads (email, status, created_at, updated_at) VALUES ('old@shop.example', 'active', :at, :at)"
            ), {"at": MOMENT})
            lead_id = connection.scalar(text("SELECT id FROM leads"))
            for run, (status, reason, _) in enumerate(ended, start=1):
                connection.execute(text(
                    "INSERT INTO enrollments (lead_id, flow, kind, stage, run, status, entered_at, end_reason) "
                    "VALUES (:lead, 'yoga', 'funnel', 'lead', :run, :status, :at, :reason)"
                ), {"lead": lead_id, "run": run, "status": status, "at": MOMENT, "reason": reason})
        db.engine.dispose()
        upgrade(database_url)
        with db.engine.connect() as connection:
            causes = connection.execute(text("SELECT run, end_cause FROM enrollments ORDER BY run")).all()
        assert [cause for _, cause in causes] == [cause for _, _, cause in ended]
    finally:
        db.dispose()


def test_sqlite_finds_the_in_flight_and_due_rows_through_their_partial_indexes(tmp_path: Path) -> None:
    """SQLite uses a partial index only when the query's WHERE says the index's own WHERE; a bound
    `status = ?`, or `status = 'queued'` against the index's `IN (…)`, does not, and the sweep and
    sending health then read every email ever sent (1.3 s a sweep at 3.3 million). Always SQLite:
    this is the SQLite planner's rule, and PostgreSQL plans these from its statistics."""
    from sqlalchemy.dialects import sqlite

    from autofunnel.services.enrollments import ready_to_send
    from autofunnel.services.sweep import _sweep_statements
    from autofunnel.store.models import Delivery
    from autofunnel.testing import _next_due_statement

    url = f"sqlite:///{tmp_path / 'plans.db'}"
    upgrade(url)
    db = Database.from_url(url)
    statements = [*_sweep_statements(), select(func.count()).select_from(Delivery).where(ready_to_send(datetime(2026, 1, 1, tzinfo=UTC))), _next_due_statement()]
    with db.engine.connect() as connection:
        for statement in statements:
            compiled = statement.compile(dialect=sqlite.dialect())
            moment = "2026-01-01 00:00:00.000000"  # the moments the statements are run with (`now`, …)
            values = tuple(moment if compiled.binds[name].value is None else str(compiled.binds[name].value) for name in compiled.positiontup or [])
            plan = " ".join(str(row[-1]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values))
            assert "ix_deliveries_in_flight" in plan and "SCAN deliveries" not in plan and "SCAN enrollments" not in plan, (str(compiled), plan)
    db.dispose()


def test_sqlite_fetches_a_batch_of_events_by_id_for_the_report_tallies(tmp_path: Path) -> None:
    """Without statistics SQLite takes `type = 'purchase'` for a few rows: the tallies of a batch
    of purchases or first clicks walked every purchase ever recorded (15 s a batch of 100 at 1M
    leads) unless the type is written so no index serves it (`Unindexed`). Always SQLite: this
    is the SQLite planner's rule, and PostgreSQL plans these from its statistics."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from autofunnel.services.tallies import count_engagement, count_events, count_sources, ids_in

    url = f"sqlite:///{tmp_path / 'plans.db'}"
    upgrade(url)
    db = Database.from_url(url)
    plans: list[str] = []

    def explained(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> tuple[str, Any]:
        if statement.startswith(("INSERT INTO cohort_tallies", "SELECT EXISTS")):
            plans.append(" ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)))
        return statement, parameters

    with db.engine.connect() as connection, Session(bind=connection) as session:
        # A lead seen again (event 1) before its purchase (2), whose order had a refund stored before it (4):
        # so the lookups find what makes the recounts run, and those are planned too.
        at = datetime(2026, 3, 1, tzinfo=UTC)
        lead = session.scalar(insert(Lead).values(email="plan@example.com", status="active", created_at=at, updated_at=at, status_changed_at=at).returning(Lead.id))
        for number, (kind, properties) in enumerate(
            [("subscribed", {"source": {"channel": "ads"}}), ("purchase", {"order_id": "o", "amount": 5}), ("confirmed", {}), ("refund", {"order_id": "o", "amount": 5})], start=1,
        ):
            session.execute(insert(Event).values(id=number, lead_id=lead, key=f"k{number}", type=kind, properties=properties, at=at + timedelta(hours=number), received_at=at))
        event.listen(connection, "before_cursor_execute", explained, retval=True)
        # a batch as large as a web process gathers (SQLite weighs a long id list against an index), without the refund
        batch = [1, 2, 3, *range(5, 102)]
        count_events(session, ids_in(batch[:3]), batch=frozenset({"purchase", "refund"}))
        count_events(session, ids_in(batch), batch=frozenset({"purchase", "refund"}))
        count_engagement(session, "clicked", ids_in(batch))
        count_sources(session, ids_in(batch[:3]), "yoga")
        session.rollback()
    db.dispose()
    # the events, the lookup of refunds before their purchases, those refunds taken back (for 3 ids and for 100);
    # the first clicks, the lookup of purchases after them; the lookup of purchases after the sources, the sources
    assert len(plans) == 10, plans
    for plan in plans:
        assert "ix_events_type_at" not in plan and "SCAN events" not in plan, plan


def test_a_new_database_finds_each_entrys_holdout_group_by_its_lead(migrated_db: Database) -> None:
    """Before a new database's first ANALYZE every index looks alike to PostgreSQL: it found an
    import chunk's holdout groups through the funnel's `(flow, name)` index, reading every
    assignment of the funnel for each entry (an import of 30,000 leads: 524 rows/s, each chunk
    slower than the last). The lookup can only go by the lead. On SQLite the same holds."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from autofunnel.services.tallies import count_stage_entries, ids_in

    plans: list[str] = []

    def explained(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> tuple[str, Any]:
        if statement.startswith("INSERT INTO cohort_tallies"):
            plans.extend(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))
        return statement, parameters

    with migrated_db.engine.connect() as connection, Session(bind=connection) as session:
        postgres = migrated_db.engine.dialect.name == "postgresql"
        at = "2026-03-01 00:00:00+00" if postgres else "2026-03-01 00:00:00.000000"
        connection.exec_driver_sql(
            "INSERT INTO leads (id, email, status, created_at, updated_at, status_changed_at, fields, tags, source, consent)"
            f" SELECT n, 'l' || n || '@example.com', 'active', '{at}', '{at}', '{at}', '{{}}', '[]', '{{}}', '{{}}' FROM generate_series(1, 20000) AS n"
            if postgres else
            "WITH RECURSIVE n(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM n WHERE n < 20000)"
            " INSERT INTO leads (id, email, status, created_at, updated_at, status_changed_at, fields, tags, source, consent)"
            f" SELECT n, 'l' || n || '@example.com', 'active', '{at}', '{at}', '{at}', '{{}}', '[]', '{{}}', '{{}}' FROM n"
        )
        connection.exec_driver_sql(f"INSERT INTO assignments (lead_id, flow, name, value, assigned_at) SELECT id, 'yoga', 'holdout', 'treated', '{at}' FROM leads")
        connection.exec_driver_sql(
            "INSERT INTO stage_entries (lead_id, funnel, stage, position, entered_at, skipped, cohort_at)"
            f" SELECT id, 'yoga', 'lead', 0, '{at}', false, '{at}' FROM leads"
        )
        event.listen(connection, "before_cursor_execute", explained, retval=True)
        count_stage_entries(session, ids_in(list(range(15001, 20001))))
        session.rollback()
    assert plans
    assert not any("ix_assignments_flow_name" in line for line in plans), "\n".join(plans)
