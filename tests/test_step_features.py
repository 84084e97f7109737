"""Every kind of step and condition, end to end, in a project written for the test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from smtp_sink import SmtpSink

from autofunnel.clock import FixedClock
from autofunnel.services.events import record_events
from autofunnel.services.inputs import parse_events, parse_subscribe
from autofunnel.services.leads import lead_view, subscribe
from autofunnel.services.scheduler import run_tick

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

FUNNEL = """\
funnel: course
from: "Team <team@course.example>"
stages:
  - stage: lead
    steps:
      - send: hello
        id: hello
        variants: {hello-a: 1, hello-b: 1}
      - tag: greeted
      - set: {level: beginner}
      - wait: {event: quiz_done, score: 10, timeout: 2d}
      - send: top-score
        if: {event: quiz_done, score: 10}
      - notify: sales@course.example
        template: hot-lead
        if: {all: [{has_tag: greeted}, {field: level, equals: beginner}]}
      - send: nudge
        id: nudge
        if: {not: {clicked: hello}}
      - wait: 1d
      - goto: nudge
        if: {not: {has_tag: stop-nudging}}
"""

EMAIL = """---
subject: "{{ funnel.title }}: {{ lead.fields.get('level', 'new') }}"
---
<html><body><p>Hi {{ lead.first_name or 'there' }}</p><a href="https://course.example/x">x</a></body></html>
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "course"
    (root / "funnels").mkdir(parents=True)
    (root / "funnels/course.yml").write_text(FUNNEL)
    (root / "templates/course").mkdir(parents=True)
    for name in ("hello", "hello-a", "hello-b", "top-score", "hot-lead", "nudge"):
        (root / f"templates/course/{name}.html").write_text(EMAIL)
    return root


def test_every_step_kind(runtime_factory: Any, project: Path, smtp_sink: SmtpSink) -> None:
    clock = FixedClock(T0)
    rt = runtime_factory(project, smtp_sink.url(), clock)
    subscribe(rt, parse_subscribe({"email": "kit@example.com", "funnel": "course"}, clock.now()), consent={})
    run_tick(rt)
    view = lead_view(rt, "kit@example.com")
    variant = next(a["value"] for a in view["assignments"] if a["name"] == "hello")
    assert variant in ("hello-a", "hello-b")
    assert view["tags"] == ["greeted"] and view["fields"] == {"level": "beginner"}
    assert [m.recipients for m in smtp_sink.messages] == [("kit@example.com",)]
    assert smtp_sink.messages[0].message["Subject"] == "course: beginner"  # rendered at send time, after the set step
    clock.current = T0 + timedelta(hours=3)
    record_events(rt, parse_events({"type": "quiz_done", "email": "kit@example.com", "properties": {"score": 7}}, clock.now()))
    run_tick(rt)
    assert len(smtp_sink.messages) == 1  # score 7 does not match the wait
    clock.current = T0 + timedelta(hours=4)
    record_events(rt, parse_events({"type": "quiz_done", "email": "kit@example.com", "properties": {"score": 10}}, clock.now()))
    run_tick(rt)
    recipients = [m.recipients[0] for m in smtp_sink.messages]
    assert recipients == ["kit@example.com", "kit@example.com", "sales@course.example", "kit@example.com"]
    for day in (1, 2):
        clock.current = T0 + timedelta(hours=4, days=day, minutes=1)
        run_tick(rt)
    nudges = [d for d in lead_view(rt, "kit@example.com")["deliveries"] if d["step"] == "nudge"]
    assert [d["occurrence"] for d in nudges] == [1, 2, 3]
    decisions = [(t["step"], t["decision"]) for t in lead_view(rt, "kit@example.com")["timeline"]]
    assert ("goto-nudge", "goto") in decisions and ("notify-hot-lead", "queued") in decisions
    assert ("wait-event-quiz_done", "waiting") in decisions
