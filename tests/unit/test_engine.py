"""The pure engine: step decisions over funnels written as YAML, no database."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from autofunnel.domain.conditions import EventFact
from autofunnel.domain.engine import (
    MAX_STEPS_PER_ADVANCE,
    Advance,
    AssignVariant,
    ChangeFields,
    ChangeTag,
    Cursor,
    LeadFacts,
    Leave,
    NotifyPerson,
    Parked,
    SendEmail,
    Skip,
    StartDeadline,
    WaitDecision,
    advance,
    resume_after_removed,
    wake_matches,
)
from autofunnel.domain.loader import parse_flow
from autofunnel.domain.model import EventMatcher, Flow, Funnel, Sequence
from autofunnel.domain.problems import Problems
from autofunnel.domain.statuses import EndCause

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday


def flow(text: str) -> Flow:
    problems = Problems(Path("t.yml"))
    parsed = parse_flow(text, problems)
    assert not problems.items, [str(p) for p in problems.items]
    assert parsed is not None
    return parsed


def steps_of(parsed: Flow, stage: str = "") -> tuple:
    if isinstance(parsed, Funnel):
        return parsed.stage(stage or parsed.stages[0].name).steps
    return parsed.steps


def run(parsed: Flow, cursor: Cursor, lead: LeadFacts, now: datetime, stage: str = "", seed: int = 1) -> Advance:
    return advance(cursor, parsed, steps_of(parsed, stage), lead, now, random.Random(seed))


def active(**kwargs: object) -> LeadFacts:
    return LeadFacts(status="active", email="a@b.example", **kwargs)  # type: ignore[arg-type]


YOGA = """\
funnel: yoga
stages:
  - stage: lead
    steps:
      - send: welcome
      - wait: 1d
      - send: tripwire-offer
        deadline: {name: tripwire, in: 48h}
      - wait: 1d
      - send: tripwire-reminder
        if: {not: {deadline_passed: tripwire}}
      - wait: {until_deadline: tripwire}
      - send: tripwire-expired
  - stage: tripwire
    enter_on: {event: purchase, product: mini}
"""


def test_a_lead_walks_the_first_stage() -> None:
    yoga = flow(YOGA)
    first = run(yoga, Cursor("welcome"), active(), T0)
    assert [type(d) for d in first.decisions] == [SendEmail, WaitDecision]
    assert first.decisions[0] == SendEmail("welcome", 1, "welcome")
    assert first.cursor.step_id == "wait-after-welcome" and first.cursor.parked == Parked("time")
    assert first.due_at == T0 + timedelta(days=1)

    second = run(yoga, first.cursor, active(), first.due_at)
    deadline = T0 + timedelta(days=1, hours=48)
    assert second.decisions[:2] == (
        StartDeadline("tripwire-offer", "tripwire", deadline),
        SendEmail("tripwire-offer", 1, "tripwire-offer"),
    )
    assert second.due_at == T0 + timedelta(days=2)

    third = run(yoga, second.cursor, active(deadlines={"tripwire": deadline}), second.due_at)
    assert third.decisions[0] == SendEmail("tripwire-reminder", 1, "tripwire-reminder")
    assert third.cursor.step_id == "wait-until-tripwire" and third.due_at == deadline

    last = run(yoga, third.cursor, active(deadlines={"tripwire": deadline}), deadline)
    assert last.decisions == (SendEmail("tripwire-expired", 1, "tripwire-expired"), Leave(None, "done", "all steps done", EndCause.FINISHED))
    assert last.status == "done" and last.due_at is None


def test_condition_false_is_a_recorded_skip() -> None:
    yoga = flow(YOGA)
    late = T0 + timedelta(days=5)
    result = run(yoga, Cursor("tripwire-reminder"), active(deadlines={"tripwire": T0}), late)
    assert result.decisions[0] == Skip("tripwire-reminder", "condition false")


def test_a_deadline_starts_once() -> None:
    yoga = flow(YOGA)
    existing = T0 + timedelta(hours=5)
    result = run(yoga, Cursor("tripwire-offer"), active(deadlines={"tripwire": existing}), T0)
    assert not any(isinstance(d, StartDeadline) for d in result.decisions)


def test_wait_until_a_deadline_never_started_goes_on() -> None:
    yoga = flow(YOGA)
    result = run(yoga, Cursor("wait-until-tripwire"), active(), T0)
    assert result.decisions[0] == Skip("wait-until-tripwire", "deadline 'tripwire' was never started")
    assert result.decisions[1] == SendEmail("tripwire-expired", 1, "tripwire-expired")


@pytest.mark.parametrize("status", ["unsubscribed", "bounced", "complained", "erased"])
def test_nothing_for_a_suppressed_lead(status: str) -> None:
    result = run(flow(YOGA), Cursor("welcome"), LeadFacts(status=status, email="x@y.example"), T0)
    assert result.decisions == (Leave("welcome", "exited", f"lead {status}", EndCause.SUPPRESSED),)
    assert result.status == "exited"


def test_a_pending_lead_waits_for_confirmation() -> None:
    yoga = flow(YOGA)
    result = run(yoga, Cursor("welcome"), LeadFacts(status="pending", email="x@y.example"), T0)
    assert result.cursor == Cursor("welcome", Parked("confirm"), {})
    assert result.due_at is None
    resumed = run(yoga, result.cursor, active(), T0 + timedelta(hours=3))
    assert resumed.decisions[0] == SendEmail("welcome", 1, "welcome")


WINDOWED = """\
sequence: s
start_on: {event: x}
send_window: "09:00-17:00"
quiet_days: [sat, sun]
steps:
  - send: one
"""


def test_send_window_in_the_leads_timezone() -> None:
    seq = flow(WINDOWED)
    friday_evening_tokyo = datetime(2026, 3, 6, 10, 0, tzinfo=UTC)  # 19:00 in Tokyo, Friday
    result = run(seq, Cursor("one"), active(timezone="Asia/Tokyo"), friday_evening_tokyo)
    assert result.cursor == Cursor("one", None, {})
    assert result.due_at == datetime(2026, 3, 9, 0, 0, tzinfo=UTC)  # Monday 09:00 in Tokyo
    assert isinstance(result.decisions[0], WaitDecision)
    sent = run(seq, result.cursor, active(timezone="Asia/Tokyo"), result.due_at)
    assert sent.decisions[0] == SendEmail("one", 1, "one")


def test_send_window_wraps_past_midnight() -> None:
    seq = flow(WINDOWED.replace("09:00-17:00", "22:00-02:00").replace("quiet_days: [sat, sun]\n", ""))
    assert run(seq, Cursor("one"), active(), datetime(2026, 3, 2, 1, 0, tzinfo=UTC)).decisions[0] == SendEmail("one", 1, "one")
    deferred = run(seq, Cursor("one"), active(), datetime(2026, 3, 2, 3, 0, tzinfo=UTC))
    assert deferred.due_at == datetime(2026, 3, 2, 22, 0, tzinfo=UTC)


CAPPED = """\
sequence: s
start_on: {event: x}
frequency_cap: {max: 2, per: 1d, when_capped: WHEN}
steps:
  - send: one
  - send: two
"""


def test_frequency_cap_defers() -> None:
    seq = flow(CAPPED.replace("WHEN", "defer"))
    recent = [T0 - timedelta(hours=20), T0 - timedelta(hours=2)]
    result = run(seq, Cursor("one"), active(recent_sends=recent), T0)
    assert result.due_at == T0 + timedelta(hours=4)
    assert result.cursor.step_id == "one" and result.cursor.parked is None


def test_frequency_cap_skips() -> None:
    seq = flow(CAPPED.replace("WHEN", "skip"))
    recent = [T0 - timedelta(hours=20), T0 - timedelta(hours=2)]
    result = run(seq, Cursor("one"), active(recent_sends=recent), T0)
    assert result.decisions[:2] == (Skip("one", "capped: frequency cap reached"), Skip("two", "capped: frequency cap reached"))


def test_a_send_step_with_capped_false_ignores_the_cap() -> None:
    seq = flow(CAPPED.replace("WHEN", "skip").replace("  - send: one\n", "  - send: one\n    capped: false\n"))
    recent = [T0 - timedelta(hours=20), T0 - timedelta(hours=2)]
    result = run(seq, Cursor("one"), active(recent_sends=recent), T0)
    assert result.decisions[:2] == (SendEmail("one", 1, "one"), Skip("two", "capped: frequency cap reached"))


def test_holdout_gets_no_email_but_keeps_its_deadlines() -> None:
    yoga = flow(YOGA)
    result = run(yoga, Cursor("tripwire-offer"), active(held_out=True), T0)
    assert result.decisions[0] == StartDeadline("tripwire-offer", "tripwire", T0 + timedelta(hours=48))
    assert result.decisions[1] == Skip("tripwire-offer", "holdout: this lead gets none of the funnel's emails")
    assert not any(isinstance(d, SendEmail) for d in result.decisions)


VARIANTS = """\
sequence: s
start_on: {event: x}
steps:
  - send: offer
    variants: {offer-a: 1, offer-b: 1}
  - tag: offered
  - set: {stage: offered}
  - untag: new
  - notify: owner
    template: call
"""


def test_variants_are_assigned_once_and_kept() -> None:
    seq = flow(VARIANTS)
    result = run(seq, Cursor("offer"), active(owner="boss@shop.example", tags=frozenset({"new"})), T0, seed=7)
    assign = [d for d in result.decisions if isinstance(d, AssignVariant)]
    assert len(assign) == 1
    chosen = assign[0].template
    assert result.decisions[1] == SendEmail("offer", 1, chosen, chosen)
    assert ChangeTag("tag-offered", "offered", True) in result.decisions
    assert ChangeTag("untag-new", "new", False) in result.decisions
    assert ChangeFields("set-stage", {"stage": "offered"}) in result.decisions
    assert NotifyPerson("notify-call", 1, "call", "boss@shop.example") in result.decisions
    again = run(seq, Cursor("offer"), active(assignments={"offer": chosen}), T0, seed=99)
    assert not any(isinstance(d, AssignVariant) for d in again.decisions)
    assert again.decisions[0] == SendEmail("offer", 1, chosen, chosen)
    assert Skip("notify-call", "no owner to notify") in again.decisions


def test_variants_split_evenly() -> None:
    seq = flow(VARIANTS)
    counts: dict[str, int] = {}
    for seed in range(2000):
        chosen = next(d.template for d in run(seq, Cursor("offer"), active(), T0, seed=seed).decisions if isinstance(d, AssignVariant))
        counts[chosen] = counts.get(chosen, 0) + 1
    assert 900 < counts["offer-a"] < 1100


LOOP = """\
sequence: s
start_on: {event: x}
steps:
  - send: nudge
  - wait: 1d
  - goto: nudge
    if: {not: {has_tag: done}}
"""


def test_goto_loops_with_new_occurrences() -> None:
    seq = flow(LOOP)
    cursor = Cursor("nudge")
    now = T0
    sent = []
    for _ in range(3):
        result = run(seq, cursor, active(), now)
        sent += [d for d in result.decisions if isinstance(d, SendEmail)]
        cursor, now = result.cursor, result.due_at
    assert [d.occurrence for d in sent] == [1, 2, 3]
    final = run(seq, cursor, active(tags=frozenset({"done"})), now)
    assert final.decisions[0] == Skip("goto-nudge", "condition false")
    assert final.status == "done"


def test_a_loop_without_wait_is_cut_off() -> None:
    seq = flow("sequence: s\nstart_on: {event: x}\nsteps:\n  - tag: a\n  - goto: tag-a\n")
    result = run(seq, Cursor("tag-a"), active(), T0)
    assert result.status == "exited"
    assert result.decisions[-1].reason.startswith(f"more than {MAX_STEPS_PER_ADVANCE} steps without a wait")


def test_exit_ends_the_steps() -> None:
    seq = flow("sequence: s\nstart_on: {event: x}\nsteps:\n  - exit\n    \n  - send: never\n".replace("  - exit\n    \n", "  - exit\n"))
    result = run(seq, Cursor("exit"), active(), T0)
    assert result.decisions == (Leave("exit", "exited", "exit step", EndCause.EXIT_STEP),)


def test_a_removed_step_resumes_at_the_next_surviving_one() -> None:
    assert resume_after_removed("b", ["a", "b", "c", "d"], ["a", "d"]) == "d"
    assert resume_after_removed("b", ["a", "b"], ["a"]) is None
    assert resume_after_removed("zz", ["a"], ["a"]) is None
    seq = flow("sequence: s\nstart_on: {event: x}\nsteps:\n  - send: a\n  - send: d\n")
    parked_on_removed_wait = Cursor("wait-2d", Parked("time"), {"a": 1})
    result = advance(parked_on_removed_wait, seq, seq.steps, active(), T0, random.Random(1), previous_ids=["a", "wait-2d", "d"])
    assert result.decisions[0] == SendEmail("d", 1, "d")


def test_wait_for_event_remembers_its_start_and_matcher() -> None:
    seq = flow("sequence: s\nstart_on: {event: x}\nsteps:\n  - wait: {event: purchase, product: p, timeout: 3d}\n  - send: after\n")
    parked = run(seq, Cursor("wait-event-purchase"), active(), T0)
    assert parked.cursor.parked == Parked("event", EventMatcher("purchase", {"product": "p"}), T0)
    assert parked.due_at == T0 + timedelta(days=3)
    assert wake_matches(parked.cursor.parked, "purchase", {"product": "p"}, T0 + timedelta(hours=1))
    assert not wake_matches(parked.cursor.parked, "purchase", {"product": "p"}, T0 - timedelta(hours=1))
    assert not wake_matches(parked.cursor.parked, "purchase", {"product": "q"}, T0 + timedelta(hours=1))
    woken = run(seq, parked.cursor, active(), T0 + timedelta(hours=1))
    assert woken.decisions[0] == SendEmail("after", 1, "after")


def test_event_condition_sees_only_past_events() -> None:
    seq = flow("sequence: s\nstart_on: {event: x}\nsteps:\n  - send: a\n    if: {event: purchase, product: p}\n")
    past = EventFact("purchase", {"product": "p"}, T0 - timedelta(hours=1))
    future = EventFact("purchase", {"product": "p"}, T0 + timedelta(hours=1))
    assert run(seq, Cursor("a"), active(events=[past]), T0).decisions[0] == SendEmail("a", 1, "a")
    assert run(seq, Cursor("a"), active(events=[future]), T0).decisions[0] == Skip("a", "condition false")


def test_sequences_have_no_holdout() -> None:
    seq = flow("sequence: s\nstart_on: {event: x}\nsteps:\n  - send: a\n")
    assert isinstance(seq, Sequence)
    assert run(seq, Cursor("a"), active(held_out=True), T0).decisions[0] == SendEmail("a", 1, "a")


def test_machine_clicks_move_nothing() -> None:
    from autofunnel.domain.model import Project
    from autofunnel.domain.routing import route_event

    seq = flow("sequence: s\nstart_on: {event: clicked}\nsteps:\n  - send: a\n")
    project = Project(Path("."), {"s": seq})
    human = EventFact("clicked", {"bot": False}, T0)
    machine = EventFact("clicked", {"bot": True}, T0)
    assert route_event(project, "active", {}, {}, [], human)
    assert route_event(project, "active", {}, {}, [], machine) == []
    parked = Parked("event", EventMatcher("clicked"), T0 - timedelta(hours=1))
    assert wake_matches(parked, "clicked", {"bot": False}, T0)
    assert not wake_matches(parked, "clicked", {"bot": True}, T0)
    cond = flow("sequence: s\nstart_on: {event: x}\nsteps:\n  - send: a\n    if: {event: clicked}\n")
    assert run(cond, Cursor("a"), active(events=[EventFact("clicked", {"bot": True}, T0)]), T0).decisions[0] == Skip("a", "condition false")
