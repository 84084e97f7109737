"""The in-memory simulator (autofunnel.domain.simulation, which the engine's property tests
drive) sends exactly what the real services send — subscribe, record_events, the scheduler
pass and delivery on a temporary database — for the same random funnel and the same events.

So the promises proved cheaply on the simulator hold for the product, and `autofunnel
simulate`, which runs the real services, shows what the engine decides."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autofunnel.domain.simulation import Simulator
from autofunnel.services.project import load_project
from autofunnel.testing import DEFAULT_START, FunnelTest

PRODUCTS = ("p1", "p2", "p3")


@st.composite
def stage_steps(draw: st.DrawFn, prefix: str) -> list[str]:
    lines: list[str] = []
    sends = 0
    for index in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["send", "send", "wait", "wait_event", "deadline_send", "tag", "tagged_send"]))
        name = f"{prefix}{index}"
        if kind == "send":
            lines.append(f"      - send: {name}")
            sends += 1
        elif kind == "deadline_send":
            lines += [f"      - send: {name}", f"        deadline: {{name: d{prefix}, in: {draw(st.integers(1, 48))}h}}"]
            sends += 1
        elif kind == "tagged_send":
            lines += [f"      - send: {name}", "        if: {has_tag: vip}"]
            sends += 1
        elif kind == "wait":
            lines.append(f"      - wait: {draw(st.integers(1, 40))}h")
        elif kind == "wait_event":
            lines.append(f"      - wait: {{event: nudge, timeout: {draw(st.integers(1, 30))}h}}")
        else:
            lines.append("      - tag: vip")
    return lines


@st.composite
def funnels(draw: st.DrawFn) -> str:
    count = draw(st.integers(1, 3))
    out = ["funnel: f", "title: F", "double_opt_in: false", "stages:"]
    for i in range(count):
        out.append(f"  - stage: s{i}")
        if i:
            out.append(f"    enter_on: {{event: purchase, product: {PRODUCTS[i - 1]}}}")
        out.append("    steps:")
        out += draw(stage_steps(f"s{i}-"))
    return "\n".join(out) + "\n"


def write_project(folder: Path, funnel: str) -> None:
    (folder / "funnels").mkdir(parents=True, exist_ok=True)
    (folder / "templates" / "f").mkdir(parents=True, exist_ok=True)
    (folder / "funnels" / "f.yml").write_text(funnel)
    for line in funnel.splitlines():
        if line.strip().startswith("- send: "):
            name = line.split(": ", 1)[1]
            (folder / "templates" / "f" / f"{name}.html").write_text(
                f'---\nsubject: "{name}"\n---\n<p>{name} <a href="https://shop.example/{name}">go</a> '
                '<a href="{{ unsubscribe_url }}">unsubscribe</a></p>\n'
            )


EVENTS = st.one_of(
    st.tuples(st.just("purchase"), st.builds(lambda p: {"product": p}, st.sampled_from(PRODUCTS))),
    st.tuples(st.just("nudge"), st.just({})),
    st.tuples(st.just("unsubscribed"), st.just({})),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    funnel=funnels(),
    leads=st.lists(st.integers(0, 48), min_size=1, max_size=3),
    stream=st.lists(st.tuples(st.integers(1, 96), st.integers(0, 2), EVENTS), max_size=8),
)
def test_the_simulator_sends_what_the_services_send(tmp_path_factory: object, funnel: str, leads: list[int], stream: list) -> None:
    folder = tmp_path_factory.mktemp("proj")  # type: ignore[attr-defined]
    write_project(folder, funnel)
    actions = [(DEFAULT_START + timedelta(hours=hour), i, f"l{i}@example.com", None) for i, hour in enumerate(leads)]
    actions += [
        (DEFAULT_START + timedelta(hours=hour, minutes=7), 10 + order, f"l{who % len(leads)}@example.com", event)
        for order, (hour, who, event) in enumerate(stream)
    ]
    actions.sort(key=lambda action: (action[0], action[1]))
    end = DEFAULT_START + timedelta(days=10)

    model = Simulator(load_project(folder), random.Random(0))
    with FunnelTest(folder) as real:
        for moment, _, email, event in actions:
            real.advance_to(moment)
            if event is None:
                model.subscribe(email, "f", moment)
                real.subscribe(email, "f")
            else:
                model.record(email, event[0], event[1], moment)
                real.event(email, event[0], **event[1])
        model.run_until(end)
        real.advance_to(end)
        sent = sorted((m.sent_at, m.lead, m.stage, m.step) for m in real.outbox)
    simulated = sorted((s.at, s.lead, s.stage, s.step_id) for s in model.sends)
    assert sent == simulated, funnel
