"""Handing work to the broker and finding what it lost; the shared send pace;
health and status that notice work nobody does. Real database, fixed clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import TEST_BROKER_URL
from smtp_sink import SmtpSink
from sqlalchemy import func, select, update

from autofunnel.cli import main
from autofunnel.clock import FixedClock
from autofunnel.services.delivery import deliver
from autofunnel.services.dispatch import MAX_QUEUED_TASKS, scheduler_pass
from autofunnel.services.inputs import parse_subscribe
from autofunnel.services.leads import subscribe
from autofunnel.services.scheduler import sweep, tick
from autofunnel.services.send_pace import DatabasePace, RedisPace
from autofunnel.services.status import health, work_status
from autofunnel.store.models import Delivery

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
LEASE = 60.0


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def rt(runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, clock: FixedClock) -> Any:
    yoga = project_dir / "funnels/yoga.yml"
    yoga.write_text(yoga.read_text().replace("holdout: 10%", "holdout: 0%").replace("double_opt_in: true", "double_opt_in: false"))
    return runtime_factory(project_dir, smtp_sink.url(), clock, delivery_lease=str(LEASE))


def confirmed_leads(rt: Any, count: int) -> None:
    for number in range(count):
        subscribe(rt, parse_subscribe({"email": f"r{number}@example.com", "funnel": "yoga"}, rt.clock.now()), consent={"via": "test"})


def later(clock: FixedClock, seconds: float) -> None:
    clock.current = clock.current + timedelta(seconds=seconds)


def test_lost_work_is_handed_out_again_only_when_the_broker_is_empty(rt: Any, clock: FixedClock) -> None:
    confirmed_leads(rt, 1)
    queued = tick(rt).queued
    assert len(queued) == 1
    assert sweep(rt, broker_empty=True).lost == []  # just handed out: waiting in the broker, not lost

    later(clock, LEASE + 1)
    assert sweep(rt, broker_empty=False).lost == []  # others wait in the queue: it may be one of them
    assert sweep(rt, broker_empty=True).lost == queued
    assert sweep(rt, broker_empty=True).lost == []  # stamped again: one hand-out per lease, across schedulers


def test_lost_work_behind_a_queue_that_never_empties_is_handed_out_after_ten_leases(rt: Any, clock: FixedClock) -> None:
    confirmed_leads(rt, 1)
    queued = tick(rt).queued
    later(clock, LEASE * 9)
    assert sweep(rt, broker_empty=False).lost == []
    later(clock, LEASE + 1)
    assert sweep(rt, broker_empty=False).lost == queued


def test_a_second_copy_of_a_batch_leaves_a_waiting_retry_to_the_sweep(rt: Any, clock: FixedClock, smtp_sink: SmtpSink) -> None:
    smtp_sink.answer("r0@example.com", 451, "4.7.1 try again later")
    confirmed_leads(rt, 1)
    queued = tick(rt).queued
    assert deliver(rt, queued).retried == 1
    again = deliver(rt, queued)  # the broker delivered the batch twice
    assert (again.sent, again.retried, again.failed) == (0, 0, 0)
    later(clock, 61)
    assert sweep(rt, broker_empty=False).retries == queued  # still known as a retry, not mistaken for lost work


def test_a_retry_is_handed_out_when_its_back_off_ends_however_busy_the_broker(rt: Any, clock: FixedClock, smtp_sink: SmtpSink) -> None:
    smtp_sink.answer("r0@example.com", 451, "4.7.1 try again later")
    confirmed_leads(rt, 1)
    queued = tick(rt).queued
    assert deliver(rt, queued).retried == 1
    assert sweep(rt, broker_empty=False).retries == []  # back-off not over
    later(clock, 61)
    assert sweep(rt, broker_empty=False).retries == queued


def test_a_pass_hands_out_committed_work_in_batches(rt: Any) -> None:
    confirmed_leads(rt, 120)
    batches: list[list[int]] = []

    def hand_out(ids: list[int]) -> None:
        with rt.db.read() as session:  # another connection sees them: handed out only after commit
            assert set(session.scalars(select(Delivery.status).where(Delivery.id.in_(ids)))) == {"queued"}
        batches.append(ids)

    stats = scheduler_pass(rt, hand_out, lambda: 0)
    assert [len(batch) for batch in batches] == [50, 50, 20]
    assert (stats.due, stats.handed_out, stats.lost) == (120, 120, 0)
    assert len({delivery for batch in batches for delivery in batch}) == 120


def test_a_pass_stops_deciding_while_the_broker_is_full_and_the_rest_waits_in_the_database(rt: Any) -> None:
    """A wave of due leads never piles up in the broker: past MAX_QUEUED_TASKS messages a pass
    stops after the batch it decided, and a later pass decides the rest."""
    confirmed_leads(rt, 120)
    handed: list[list[int]] = []
    depths = iter([MAX_QUEUED_TASKS - 1, MAX_QUEUED_TASKS])
    first = scheduler_pass(rt, handed.append, lambda: next(depths, MAX_QUEUED_TASKS), batch=40)
    assert (first.due, first.handed_out) == (80, 80)
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 80
    second = scheduler_pass(rt, handed.append, lambda: 0, batch=40)
    assert (second.due, second.handed_out) == (40, 40)
    assert len({delivery for batch in handed for delivery in batch}) == 120


def test_a_broker_that_cannot_say_its_depth_gets_no_second_copy(rt: Any, clock: FixedClock) -> None:
    confirmed_leads(rt, 1)
    tick(rt)
    later(clock, LEASE + 1)

    def unknown() -> int:
        raise ConnectionError("broker down")

    handed: list[list[int]] = []
    assert scheduler_pass(rt, handed.append, unknown).lost == 0
    assert handed == []


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))


def test_the_database_pace_spaces_emails_across_workers(migrated_db: Any) -> None:
    fake = FakeTime()
    first = DatabasePace(migrated_db, 10, sleep=fake.sleep, now=lambda: fake.now)
    second = DatabasePace(migrated_db, 10, sleep=fake.sleep, now=lambda: fake.now)
    waits = [first.wait_turn(), second.wait_turn(), first.wait_turn(), second.wait_turn()]
    assert [round(wait, 6) for wait in waits] == [0.0, 0.1, 0.2, 0.3]
    fake.now += 5  # idle for a while: no burst is saved up
    assert [round(first.wait_turn(), 6), round(second.wait_turn(), 6)] == [0.0, 0.1]


@pytest.mark.postgres
def test_the_redis_pace_spaces_emails_across_workers() -> None:
    import redis

    assert TEST_BROKER_URL.startswith("redis://"), "the PostgreSQL run has Redis as its broker"
    redis.Redis.from_url(TEST_BROKER_URL).delete("autofunnel:send-pace")
    fake = FakeTime()
    first = RedisPace(TEST_BROKER_URL, 4, sleep=fake.sleep, now=lambda: fake.now)
    second = RedisPace(TEST_BROKER_URL, 4, sleep=fake.sleep, now=lambda: fake.now)
    waits = [first.wait_turn(), second.wait_turn(), second.wait_turn()]
    assert [round(wait, 6) for wait in waits] == [0.0, 0.25, 0.5]
    assert fake.slept == [0.25, 0.5]


def test_health_notices_work_that_nobody_does(rt: Any, clock: FixedClock) -> None:
    confirmed_leads(rt, 1)
    queued = tick(rt).queued
    assert health(rt).status_code == 200

    later(clock, LEASE * 3)  # handed out, never taken: a worker is up but idle, or none runs
    stalled = health(rt)
    assert stalled.status_code == 503 and stalled.failing == "work"
    assert "nothing finished" in stalled.work

    assert deliver(rt, queued).sent == 1
    assert health(rt).status_code == 200


def test_work_status_counts_what_is_due_and_what_finished(rt: Any, clock: FixedClock) -> None:
    confirmed_leads(rt, 3)
    later(clock, 30)
    status = work_status(rt, broker_depth=2)
    assert (status.due_now, status.oldest_due_age_s, status.queue_depth) == (3, 30.0, 2)
    deliver(rt, tick(rt).queued)
    status = work_status(rt, broker_depth=0)
    assert (status.due_now, status.sent_last_minute, status.sent_last_hour, status.failed_last_hour) == (0, 3, 3, 0)


def test_the_status_command_prints_the_figures(rt: Any) -> None:
    confirmed_leads(rt, 2)
    env = {"AUTOFUNNEL_DATABASE_URL": rt.settings.database_url, "AUTOFUNNEL_BROKER_URL": rt.settings.broker_url or ""}
    result = CliRunner().invoke(main, ["--project-dir", str(rt.settings.project_dir), "status", "--json"], env=env)
    assert result.exit_code == 1, result.output  # due since March, by the system clock: nobody works
    figures = json.loads(result.output)
    assert figures["due_now"] == 2 and "nothing finished" in figures["stalled"]
    assert set(figures) >= {"broker", "queue_depth", "oldest_due_age_s", "sent_last_minute", "sent_last_hour", "failed_last_minute", "failed_last_hour", "stalled"}
    table = CliRunner().invoke(main, ["--project-dir", str(rt.settings.project_dir), "status"], env=env)
    assert "due now:       2" in table.output


def test_an_email_being_sent_holds_its_claim_for_one_lease(rt: Any, clock: FixedClock) -> None:
    """The lease is AUTOFUNNEL_DELIVERY_LEASE: the sweep calls a dead worker's email
    interrupted after that long, and not a moment before."""
    confirmed_leads(rt, 1)
    queued = tick(rt).queued
    leases: list[Any] = []

    class Watching:
        @contextmanager
        def session(self) -> Iterator[Any]:
            yield self

        def send(self, envelope_from: str, recipient: str, message: bytes) -> None:
            with rt.db.read() as session:
                leases.append(session.execute(select(Delivery.status, Delivery.lease_until).where(Delivery.id == queued[0])).one())

    assert deliver(rt, queued, transport=Watching()).sent == 1
    assert leases == [("sending", T0 + timedelta(seconds=LEASE))]


def test_a_unit_of_work_waits_out_a_short_database_outage() -> None:
    from sqlalchemy.exc import OperationalError

    from autofunnel.services.database import through_outage

    failures = [OperationalError("UPDATE deliveries", {}, Exception("server closed the connection unexpectedly"))] * 2
    calls: list[int] = []

    def work() -> str:
        calls.append(1)
        if failures:
            raise failures.pop()
        return "recorded"

    assert through_outage(work, for_seconds=5, what="recording a sent email") == "recorded"
    assert len(calls) == 3

    def never() -> None:
        raise OperationalError("UPDATE deliveries", {}, Exception("connection refused"))

    with pytest.raises(OperationalError):
        through_outage(never, for_seconds=0.5, what="recording a sent email")


def test_one_enrollment_that_cannot_be_decided_holds_back_nobody(rt: Any, clock: FixedClock) -> None:
    """A poisoned row is pushed back an hour with the error in its lead's timeline; the
    rest of its batch goes on (DESIGN: one bad row never crash-loops the scheduler)."""
    from autofunnel.services.leads import lead_view
    from autofunnel.store.models import Enrollment

    confirmed_leads(rt, 3)
    with rt.db.transaction() as session:  # a stored wait the engine cannot read
        session.execute(update(Enrollment).where(Enrollment.lead_id == 2).values(waiting_for={"kind": "time", "since": "not a time"}))
    report = tick(rt)
    assert len(report.queued) == 2 and report.enrollments == 2
    assert [line.decision for line in report.lines if line.decision == "error"] == ["error"]
    view = lead_view(rt, "r1@example.com")
    assert view["enrollments"][0]["due_at"].startswith("2026-03-02T11:00")
    assert any(entry["decision"] == "error" and "ValueError" in entry["reason"] for entry in view["timeline"])
    assert tick(rt).enrollments == 0  # not tried again before its hour
