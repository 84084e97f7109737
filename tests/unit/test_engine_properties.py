"""Property tests of the pure engine and event routing over random funnels and
random event streams (hypothesis), through the in-memory simulator.

Promises checked on every run: nothing is sent after its stage ended or its
sequence stopped; nothing goes to a suppressed lead; no step occurrence is sent
twice; every step a lead reaches is decided — sent, skipped with a reason, or
waited on — and none is passed over silently.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autofunnel.domain.engine import Leave, SendEmail, Skip, WaitDecision
from autofunnel.domain.model import (
    AddTag,
    DeadlinePassed,
    DeadlineSpec,
    EventMatcher,
    Exit,
    Funnel,
    HasTag,
    Not,
    Project,
    RemoveTag,
    Send,
    SendingRules,
    Sequence,
    Stage,
    Step,
    Wait,
    WaitForEvent,
    WaitUntilDeadline,
)
from autofunnel.domain.simulation import Simulator

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
PRODUCTS = ("p1", "p2", "p3")
HOURS = st.integers(min_value=0, max_value=96)


@st.composite
def steps(draw: st.DrawFn, prefix: str) -> tuple[Step, ...]:
    made: list[Step] = []
    for index in range(draw(st.integers(0, 6))):
        sid = f"{prefix}{index}"
        kind = draw(st.sampled_from(["send", "send", "wait", "tag", "untag", "exit", "wait_event", "deadline_send", "wait_deadline"]))
        condition = draw(st.one_of(st.none(), st.builds(HasTag, st.sampled_from(["a", "b"])), st.builds(lambda n: Not(DeadlinePassed(n)), st.just("d"))))
        if kind == "send":
            made.append(Step(sid, Send(sid), condition))
        elif kind == "deadline_send":
            made.append(Step(sid, Send(sid, deadline=DeadlineSpec("d", timedelta(hours=draw(st.integers(1, 48))))), condition))
        elif kind == "wait":
            made.append(Step(sid, Wait(timedelta(hours=draw(st.integers(0, 30))))))
        elif kind == "wait_deadline":
            made.append(Step(sid, WaitUntilDeadline("d")))
        elif kind == "wait_event":
            made.append(Step(sid, WaitForEvent(EventMatcher("custom", {"n": draw(st.integers(0, 1))}), timedelta(hours=draw(st.integers(1, 30))))))
        elif kind == "tag":
            made.append(Step(sid, AddTag(draw(st.sampled_from(["a", "b"]))), condition))
        elif kind == "untag":
            made.append(Step(sid, RemoveTag(draw(st.sampled_from(["a", "b"]))), condition))
        else:
            made.append(Step(sid, Exit(), condition if condition is not None else HasTag("never")))
    return tuple(made)


@st.composite
def projects(draw: st.DrawFn) -> Project:
    stage_count = draw(st.integers(1, 4))
    stages = tuple(
        Stage(f"s{i}", draw(steps(f"s{i}-")), None if i == 0 else EventMatcher("purchase", {"product": PRODUCTS[i - 1]}))
        for i in range(stage_count)
    )
    rules = SendingRules()
    funnel = Funnel(slug="f", title="f", stages=stages, rules=rules, path=Path("f.yml"))
    sequence = Sequence(
        slug="cart", title="cart", start_on=EventMatcher("cart_updated"), steps=draw(steps("c-")) or (Step("c-x", Send("c-x")),),
        stop_on=(EventMatcher("purchase"),), restart=draw(st.booleans()), path=Path("c.yml"),
    )
    return Project(root=Path("."), flows={"f": funnel, "cart": sequence})


EVENT = st.one_of(
    st.tuples(st.just("purchase"), st.builds(lambda p: {"product": p}, st.sampled_from(PRODUCTS))),
    st.tuples(st.just("cart_updated"), st.just({})),
    st.tuples(st.just("custom"), st.builds(lambda n: {"n": n}, st.integers(0, 1))),
    st.tuples(st.just("unsubscribed"), st.just({})),
    st.tuples(st.just("confirmed"), st.just({})),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    project=projects(),
    leads=st.lists(st.tuples(st.booleans(), st.booleans(), HOURS), min_size=1, max_size=4),
    stream=st.lists(st.tuples(HOURS, st.integers(0, 3), EVENT), max_size=25),
    seed=st.integers(0, 10**6),
)
def test_engine_promises_hold(project: Project, leads: list[tuple[bool, bool, int]], stream: list, seed: int) -> None:
    sim = Simulator(project, random.Random(seed))
    actions: list[tuple[datetime, int, str, object]] = []
    for index, (pending, held, hour) in enumerate(leads):
        actions.append((T0 + timedelta(hours=hour), 0, f"l{index}", ("subscribe", pending, held)))
    for order, (hour, who, (kind, props)) in enumerate(stream):
        actions.append((T0 + timedelta(hours=hour, minutes=1), order + 1, f"l{who % len(leads)}", (kind, props)))
    actions.sort(key=lambda a: (a[0], a[1]))
    for moment, _, lead, action in actions:
        if action[0] == "subscribe":
            sim.subscribe(lead, "f", moment, pending=action[1], held_out=action[2])
        else:
            sim.record(lead, action[0], action[1], moment)
    sim.run_until(T0 + timedelta(days=30))

    seen: set[tuple[int, str, int]] = set()
    for send in sim.sends:
        key = (send.enrollment, send.step_id, send.occurrence)
        assert key not in seen, f"sent twice: {key}"
        seen.add(key)
        ended = sim.enrollments[send.enrollment].ended_seq
        assert ended is None or send.seq < ended, f"sent after its stage ended or sequence stopped: {send}"
        suppressed = sim.leads[send.lead].suppressed_seq
        assert suppressed is None or send.seq < suppressed, f"sent to an unsubscribed lead: {send}"

    for record in sim.advances:
        if record.lead_status == "pending":
            assert not any(isinstance(d, SendEmail) for d in record.result.decisions)
        if record.lead_status in ("unsubscribed",):
            assert not any(isinstance(d, SendEmail) for d in record.result.decisions)
        for decision in record.result.decisions:
            if isinstance(decision, (Skip, Leave, WaitDecision)):
                assert decision.reason, decision
        _no_step_passed_silently(record)


def _no_step_passed_silently(record: object) -> None:
    """In a linear step list, the steps decided in one pass are exactly a contiguous run."""
    steps = record.steps  # type: ignore[attr-defined]
    ids = [step.id for step in steps]
    decided = []
    for decision in record.result.decisions:  # type: ignore[attr-defined]
        step_id = getattr(decision, "step_id", None)
        if step_id is not None and (not decided or decided[-1] != step_id):
            decided.append(step_id)
    if not decided:
        return
    start = ids.index(decided[0])
    assert decided == ids[start : start + len(decided)], (decided, ids)
