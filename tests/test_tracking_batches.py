"""Opens and clicks gathered in a web process's memory and written in batches (services/write_behind.py):
what a normal stop writes, what a kill -9 loses, and the writer's own rules."""

from __future__ import annotations

import logging
import random
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from autofunnel.clock import FixedClock
from autofunnel.services.events import record_events
from autofunnel.services.inputs import EventInput, SubscribeInput
from autofunnel.services.leads import subscribe
from autofunnel.services.scheduler import run_tick
from autofunnel.services.write_behind import WriteBehind
from autofunnel.store.models import Delivery, Event
from autofunnel.tokens import Tokens
from autofunnel.web.public import tracking_fast_path
from services_at_hand import Part, clean_environment, free_port, http_status, wait_until

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, inside the yoga funnel's send window
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
SECRET = "test-secret-key-0123456789"


def _fetch(url: str) -> int:
    request = urllib.request.Request(url, headers={"User-Agent": BROWSER})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.db
def test_a_stopped_web_process_writes_what_it_gathered_and_a_killed_one_loses_it(
    project_dir: Path, runtime_factory: Any, database_url: str, tmp_path: Path,
) -> None:
    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", FixedClock(START))
    rt.rng = random.Random(0)  # its first draws are all above 0.1: not in the yoga holdout
    subscribe(rt, SubscribeInput(email="anna@example.com", funnel="yoga", at=START), consent={})
    record_events(rt, [EventInput("confirmed", START, {}, email="anna@example.com")])
    run_tick(rt)
    with rt.db.read() as session:
        (delivery,) = session.scalars(select(Delivery.id).where(Delivery.status == "sent"))
    pixel, click = rt.tokens.sign("open", [delivery]), rt.tokens.sign("click", [delivery, "https://yoga.example/guide.pdf"])

    def written(kind: str) -> int:
        with rt.db.read() as session:
            return session.scalar(select(func.count()).select_from(Event).where(Event.type == kind)) or 0

    # An hour between writes: only the stop writes anything.
    env = clean_environment(database_url=database_url, secret_key=SECRET, project_dir=str(project_dir), tracking_batch_seconds="3600")
    for stop in ("kill", "term"):
        port = free_port()
        web = Part(["web", "--port", str(port)], env=env, cwd=project_dir, log=tmp_path / f"web-{stop}.log").start()
        try:
            wait_until(lambda: http_status(f"http://127.0.0.1:{port}/healthz") is not None, timeout=60, what="the web process")
            assert [_fetch(f"http://127.0.0.1:{port}/t/o/{pixel}") for _ in range(5)] == [200] * 5
            assert [_fetch(f"http://127.0.0.1:{port}/t/c/{click}") for _ in range(2)] == [302] * 2
            assert (written("opened"), written("clicked")) == (0, 0)  # gathered, not yet written
        finally:
            web.kill() if stop == "kill" else web.stop()
        if stop == "kill":
            assert (written("opened"), written("clicked")) == (0, 0), "kill -9 loses what was gathered (README: what can be lost)"
    assert (written("opened"), written("clicked")) == (5, 2), web.output()
    with rt.db.read() as session:
        opened_at, clicked_at = session.execute(select(Delivery.opened_at, Delivery.clicked_at).where(Delivery.id == delivery)).one()
    assert opened_at is not None and clicked_at is not None


def test_the_writer_writes_in_the_background_in_batches_and_the_rest_at_close() -> None:
    batches: list[list[int]] = []
    writer: WriteBehind[int] = WriteBehind(batches.append, 0.05, batch=3)
    for n in range(7):
        writer.add(n)
    wait_until(lambda: sum(len(b) for b in batches) == 7, timeout=30, what="the background writes")
    assert [n for batch in batches for n in batch] == list(range(7)) and max(len(b) for b in batches) <= 3
    later: WriteBehind[int] = WriteBehind(batches.append, 3600)
    later.add(99)
    later.close()
    assert batches[-1] == [99]


def test_a_request_writes_in_its_own_thread_when_a_write_is_due_and_else_leaves_it() -> None:
    writers: list[tuple[str, list[int]]] = []
    writer: WriteBehind[int] = WriteBehind(lambda items: writers.append((threading.current_thread().name, items)), 3600, batch=3)
    writer.add(1)
    writer.add(2)
    writer.flush_if_due()
    assert writers == []  # neither a whole batch nor an interval since the last write
    writer.add(3)
    writer.flush_if_due()
    assert writers == [(threading.current_thread().name, [1, 2, 3])]
    writer.add(4)
    writer.close()
    assert writers[-1][1] == [4]


def test_the_pixel_is_answered_before_the_due_write_is_made() -> None:
    """The fast path hands the server an answer whose close() writes: the body comes out first."""
    order: list[str] = []
    tokens = Tokens([SECRET])
    engagements: WriteBehind[Any] = WriteBehind(lambda items: order.append(f"write {len(items)}"), 3600, batch=1)
    rt: Any = SimpleNamespace(tokens=tokens, engagements=engagements, clock=FixedClock(START),
                              settings=SimpleNamespace(tracking_batch_seconds=3600.0))
    token = tokens.sign("open", [1])
    app = tracking_fast_path(lambda environ, start_response: [], rt)
    answer = app({"PATH_INFO": f"/t/o/{token}", "REQUEST_METHOD": "GET", "HTTP_USER_AGENT": BROWSER}, lambda status, headers: None)
    order.extend(f"body {len(chunk)}" for chunk in answer)
    assert order == ["body 43"]
    answer.close()
    assert order == ["body 43", "write 1"]


def test_a_database_away_keeps_the_batch_for_later_and_a_broken_batch_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    written: list[int] = []
    failures = {"database": 1, "bug": 0}

    def write(items: list[int]) -> None:
        if failures["database"]:
            failures["database"] -= 1
            raise OperationalError("INSERT …", {}, Exception("the database system is shutting down"))
        if failures["bug"]:
            failures["bug"] -= 1
            raise ValueError("a bug")
        written.extend(items)

    writer: WriteBehind[int] = WriteBehind(write, 3600, batch=2)  # a full batch wakes the background writer
    with caplog.at_level(logging.WARNING):
        for n in range(3):
            writer.add(n)
        writer.flush()  # the first try (the background writer's or this one) meets the database away
        writer.flush()
        assert failures["database"] == 0 and written == [0, 1, 2]  # kept, in order, and written at the next try
        failures["bug"] = 1
        for n in range(3, 6):
            writer.add(n)
        writer.flush()
        assert failures["bug"] == 0 and written == [0, 1, 2, 5]  # that batch is dropped, the rest goes on
    assert "kept to try again" in caplog.text and "dropped 2" in caplog.text
    writer.close()


def test_past_its_bound_the_oldest_are_dropped_and_said(caplog: pytest.LogCaptureFixture) -> None:
    writer: WriteBehind[int] = WriteBehind(lambda items: None, 3600, max_pending=3)
    with caplog.at_level(logging.ERROR):
        for n in range(5):
            writer.add(n)
    assert writer.pending() == 3 and writer.dropped == 2
    assert "dropped" in caplog.text
    writer.close()
