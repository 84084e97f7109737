"""The loader, straight from YAML text to the model: no files, no database."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

from autofunnel.domain.loader import parse_flow
from autofunnel.domain.model import (
    AllOf,
    AnyOf,
    Clicked,
    DeadlinePassed,
    EventMatcher,
    FieldIs,
    Funnel,
    Goto,
    HasEvent,
    HasTag,
    Not,
    Notify,
    Opened,
    Send,
    Sequence,
    SetFields,
    Wait,
    WaitForEvent,
    WaitUntilDeadline,
)
from autofunnel.domain.problems import Problems


def load(text: str) -> tuple[object, list[str]]:
    problems = Problems(Path("f.yml"))
    flow = parse_flow(text, problems)
    return flow, [str(p) for p in problems.items]


FUNNEL = """\
funnel: demo
send_window: "22:00-07:00"
quiet_days: [sat, Sunday]
frequency_cap: {max: 2, per: 1d, when_capped: skip}
holdout: 12.5%
offers:
  deal: {url: https://a.example/x, expired_url: https://a.example/y, deadline: d1}
stages:
  - stage: lead
    steps:
      - send: hello
        deadline: {name: d1, in: 2d}
      - wait: 1d
      - send: pitch
        variants: {pitch-a: 3, pitch-b: 1}
        if: {all: [{not: {deadline_passed: d1}}, {any: [{has_tag: warm}, {opened: hello}, {clicked: hello}]}]}
      - wait: 1d
      - tag: nudged
        if: {field: plan, in: [free, trial]}
      - set: {level: 2}
        if: {field: plan, exists: true}
      - wait: {until_deadline: d1}
      - wait: {event: purchase, product: deal, timeout: 3d}
      - notify: sales@shop.example
        template: alert
        if: {event: checkout_started, cart: big}
      - goto: hello
        if: {field: plan, equals: free}
  - stage: buyer
    enter_on: {event: purchase, product: deal}
"""


def test_a_full_funnel_parses_into_the_model() -> None:
    flow, problems = load(FUNNEL)
    assert problems == []
    assert isinstance(flow, Funnel)
    assert flow.rules.send_window is not None and flow.rules.send_window.start == time(22, 0)
    assert flow.rules.quiet_days == frozenset({"sat", "sun"})
    assert flow.rules.frequency_cap is not None and flow.rules.frequency_cap.when_capped == "skip"
    assert flow.holdout == 0.125
    assert flow.offers["deal"].deadline == "d1"
    lead, buyer = flow.stages
    assert buyer.enter_on == EventMatcher("purchase", {"product": "deal"})
    steps = {step.id: step for step in lead.steps}
    assert list(steps) == [
        "hello", "wait-after-hello", "pitch", "wait-after-pitch", "tag-nudged", "set-level", "wait-until-d1",
        "wait-event-purchase", "notify-alert", "goto-hello",
    ]
    assert steps["hello"].action == Send("hello", deadline=steps["hello"].action.deadline)
    assert steps["hello"].action.deadline.duration == timedelta(days=2)
    pitch = steps["pitch"]
    assert isinstance(pitch.action, Send) and pitch.action.templates == ("pitch-a", "pitch-b")
    assert [v.weight for v in pitch.action.variants] == [3.0, 1.0]
    assert isinstance(pitch.condition, AllOf)
    assert isinstance(pitch.condition.conditions[0], Not)
    assert isinstance(pitch.condition.conditions[0].condition, DeadlinePassed)
    inner = pitch.condition.conditions[1]
    assert isinstance(inner, AnyOf)
    assert [type(c) for c in inner.conditions] == [HasTag, Opened, Clicked]
    assert steps["tag-nudged"].condition == FieldIs("plan", "in", ["free", "trial"], 19)
    assert isinstance(steps["set-level"].action, SetFields) and steps["set-level"].action.values == {"level": 2}
    assert steps["wait-after-hello"].action == Wait(timedelta(days=1))
    assert steps["wait-until-d1"].action == WaitUntilDeadline("d1")
    assert steps["wait-event-purchase"].action == WaitForEvent(EventMatcher("purchase", {"product": "deal"}), timedelta(days=3))
    assert steps["notify-alert"].action == Notify("sales@shop.example", "alert")
    assert isinstance(steps["notify-alert"].condition, HasEvent)
    assert steps["goto-hello"].action == Goto("hello")
    assert flow.deadlines["d1"].duration == timedelta(days=2)


def test_derived_ids_survive_an_inserted_step() -> None:
    before, _ = load("sequence: s\nstart_on: {event: x}\nsteps:\n  - send: a\n  - wait: 1d\n  - send: b\n")
    after, _ = load("sequence: s\nstart_on: {event: x}\nsteps:\n  - send: intro\n  - wait: 2h\n  - send: a\n  - wait: 1d\n  - send: b\n")
    assert isinstance(before, Sequence) and isinstance(after, Sequence)
    assert {s.id for s in before.steps} <= {s.id for s in after.steps}


def test_a_changed_wait_keeps_its_id_and_no_other_wait_takes_it() -> None:
    before, _ = load("sequence: s\nstart_on: {event: x}\nsteps:\n  - send: a\n  - wait: 1d\n  - send: b\n  - wait: 1d\n  - send: c\n")
    after, _ = load("sequence: s\nstart_on: {event: x}\nsteps:\n  - send: a\n  - wait: 2d\n  - send: b\n  - wait: 1d\n  - send: c\n")
    assert [s.id for s in before.steps] == [s.id for s in after.steps] == ["a", "wait-after-a", "b", "wait-after-b", "c"]


def test_explicit_ids_win_and_derived_ids_avoid_them() -> None:
    flow, problems = load("sequence: s\nstart_on: {event: x}\nsteps:\n  - send: a\n  - send: a\n    id: a\n  - send: a\n")
    assert problems == []
    assert [s.id for s in flow.steps] == ["a#2", "a", "a#3"]


def test_event_matcher_compares_every_property() -> None:
    matcher = EventMatcher("purchase", {"product": "deal"})
    assert matcher.matches("purchase", {"product": "deal", "amount": 9})
    assert not matcher.matches("purchase", {"product": "other"})
    assert not matcher.matches("purchase", {})
    assert not matcher.matches("refund", {"product": "deal"})


def test_problems_carry_lines_and_do_not_stop_parsing() -> None:
    flow, problems = load(
        "funnel: Bad Slug\nholdout: 150%\nsend_window: 9-5\nquiet_days: [someday]\n"
        "frequency_cap: {max: 0, per: 1d}\nstages:\n  - stage: a\n    steps:\n"
        "      - send: x\n        variants: [only]\n      - wait: {event: purchase}\n      - notify: nobody\n        template: t\n"
        "      - goto: 5\n"
    )
    assert problems == [
        "f.yml:1: funnel: 'Bad Slug' is not a slug (lower-case letters, digits and dashes)",
        "f.yml:3: send_window: expected \"HH:MM-HH:MM\", got '9-5'",
        "f.yml:4: quiet_days: 'someday' is not a weekday; use mon, tue, wed, thu, fri, sat, sun",
        "f.yml:5: frequency_cap.max: expected a whole number of at least 1, got 0",
        "f.yml:2: holdout: expected a share like 10%, below 100%, got '150%'",
        "f.yml:10: variants: an A/B split needs at least two templates",
        "f.yml:11: wait for an event needs a `timeout`, e.g. {event: purchase, timeout: 3d}",
        "f.yml:12: notify: expected `owner` or an email address, got 'nobody'",
        "f.yml:14: goto: no step with id '5' in this stage",
    ]
    assert flow is None


def test_not_a_flow() -> None:
    assert load("- a\n- b\n")[1] == ["f.yml:1: a funnel file is a mapping that starts with `funnel: SLUG` or `sequence: SLUG`"]
    assert load("title: x\n")[1] == ["f.yml:1: a funnel file starts with `funnel: SLUG` or `sequence: SLUG`"]


def test_first_stage_takes_no_enter_on() -> None:
    _, problems = load("funnel: f\nstages:\n  - stage: a\n    enter_on: {event: x}\n")
    assert problems == ["f.yml:4: the first stage is entered by subscribing to the funnel; it takes no enter_on"]


def test_sequence_keys() -> None:
    flow, problems = load("sequence: s\nstart_on: {event: cart_updated}\nstop_on: {event: purchase}\nrestart: yes\nsteps: [{wait: 1h}, exit]\n")
    assert problems == []
    assert isinstance(flow, Sequence)
    assert flow.restart is True
    assert flow.stop_on == (EventMatcher("purchase"),)
    assert [s.id for s in flow.steps] == ["wait-first", "exit"]
