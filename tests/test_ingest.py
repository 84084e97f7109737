"""Batches of events as a busy shop sends them: new shoppers, repeats inside one
batch, events out of order. Each batch is stored whole and applied by `at`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from autofunnel.clock import FixedClock
from autofunnel.errors import InvalidInputError
from autofunnel.services.events import RecordResult, record_events
from autofunnel.services.inputs import parse_events, parse_subscribe
from autofunnel.services.leads import lead_view, subscribe
from autofunnel.store.models import Enrollment, Event, Lead, StageEntry

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
CART = {"items": [], "value": 5, "checkout_url": "https://shop.example/c"}


@pytest.fixture
def rt(runtime_factory: Any, project_dir: Path) -> Any:
    return runtime_factory(project_dir, f"file://{project_dir / 'outbox'}", FixedClock(T0))


def events(rt: Any, *items: dict[str, Any]) -> RecordResult:
    return record_events(rt, parse_events(list(items), rt.clock.now()))


def when(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def cart_runs(rt: Any, email: str) -> list[tuple[int, str, str | None]]:
    return sorted(
        (e["run"], e["status"], e["end_reason"]) for e in lead_view(rt, email)["enrollments"] if e["flow"] == "abandoned-cart"
    )


def test_the_same_new_shopper_twice_in_one_batch_is_one_lead_whose_cart_restarts(rt: Any) -> None:
    result = events(
        rt,
        {"type": "cart_updated", "email": "Pia@Example.com", "properties": CART, "at": when(1)},
        {"type": "cart_updated", "email": "pia@example.com", "properties": CART, "at": when(0)},
    )
    assert (result.accepted, result.duplicates) == (2, 0)
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 1
    assert cart_runs(rt, "pia@example.com") == [(1, "stopped", "restarted by a new start event"), (2, "active", None)]


def test_an_id_twice_in_one_batch_stores_and_applies_only_the_first(rt: Any) -> None:
    result = events(
        rt,
        {"type": "cart_updated", "email": "rex@example.com", "id": "same", "properties": CART},
        {"type": "purchase", "email": "sue@example.com", "id": "same", "properties": {"product": "mat"}},
        {"type": "cart_updated", "email": "sue@example.com", "id": "sue-cart", "properties": CART},
    )
    assert (result.accepted, result.duplicates) == (2, 1)
    with rt.db.read() as session:
        stored = session.execute(select(Event.key, Event.type).order_by(Event.key)).all()
    assert stored == [("same", "cart_updated"), ("sue-cart", "cart_updated")]
    assert cart_runs(rt, "rex@example.com") == [(1, "active", None)]
    assert cart_runs(rt, "sue@example.com") == [(1, "active", None)]


def test_new_and_known_shoppers_in_one_batch(rt: Any) -> None:
    events(rt, {"type": "cart_updated", "email": "old@example.com", "properties": CART, "at": when(0)})
    rt.clock.current = T0 + timedelta(minutes=10)
    events(
        rt,
        {"type": "cart_updated", "email": "new@example.com", "properties": CART, "at": when(5)},
        {"type": "purchase", "email": "old@example.com", "at": when(6)},
        {"type": "purchase", "email": "new@example.com", "at": when(7)},
        {"type": "cart_updated", "email": "late@example.com", "properties": CART, "at": when(1)},
        {"type": "purchase", "email": "late@example.com", "at": when(0)},
    )
    assert cart_runs(rt, "old@example.com") == [(1, "stopped", "stopped by purchase")]
    assert cart_runs(rt, "new@example.com") == []  # its cart is older than its purchase, known in the same batch
    assert cart_runs(rt, "late@example.com") == [(1, "active", None)]  # its cart came after its purchase


def test_out_of_order_purchases_in_one_batch_walk_the_stages_by_their_time(rt: Any) -> None:
    subscribe(rt, parse_subscribe({"email": "tom@example.com", "funnel": "yoga"}, T0), consent={"via": "test"})
    rt.clock.current = T0 + timedelta(hours=3)
    events(
        rt,
        {"type": "purchase", "email": "tom@example.com", "properties": {"product": "full-course"}, "at": when(120)},
        {"type": "purchase", "email": "tom@example.com", "properties": {"product": "mini-course"}, "at": when(60)},
    )
    with rt.db.read() as session:
        entries = session.execute(
            select(StageEntry.stage, StageEntry.skipped, StageEntry.entered_at).order_by(StageEntry.position)
        ).all()
        stages = session.execute(select(Enrollment.stage, Enrollment.status, Enrollment.end_reason).order_by(Enrollment.id)).all()
    assert entries == [("lead", False, T0), ("tripwire", False, T0 + timedelta(minutes=60)), ("customer", False, T0 + timedelta(minutes=120))]
    assert [(stage, status) for stage, status, _ in stages] == [("lead", "ended"), ("tripwire", "ended"), ("customer", "active")]
    assert stages[1][2] == "entered stage 'customer'"


def test_one_bad_event_among_new_shoppers_writes_no_lead(rt: Any) -> None:
    items = [{"type": "cart_updated", "email": f"n{i}@example.com", "properties": CART} for i in range(5)]
    items.append({"type": "cart_updated", "email": "bad@example.com", "at": "yesterday"})
    with pytest.raises(InvalidInputError):
        events(rt, *items)
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 0
