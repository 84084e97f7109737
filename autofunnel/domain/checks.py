"""Warnings: what a flow may legally say but probably does not mean.

Each check looks at one parsed flow and returns problems of severity
`warning`; `validate` prints them and still exits 0.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from autofunnel.domain.model import WAITS, Exit, Flow, Goto, Sequence, Step, WaitForEvent
from autofunnel.domain.problems import Problem

CART_EVENTS = frozenset({"cart_updated", "checkout_started"})


def successors(steps: Seq[Step], index: int) -> list[int]:
    """Where a lead may go after steps[index]: the next step, a goto target, or nowhere."""
    step = steps[index]
    following = [index + 1] if index + 1 < len(steps) else []
    action = step.action
    if isinstance(action, Goto):
        ids = [s.id for s in steps]
        target = [ids.index(action.target)] if action.target in ids else []
        return target if step.condition is None else target + following
    if isinstance(action, Exit):
        return [] if step.condition is None else following
    return following


def unreachable_steps(flow: Flow) -> list[Problem]:
    problems = []
    for _, steps in flow.step_lists:
        if not steps:
            continue
        seen = {0}
        stack = [0]
        while stack:
            for nxt in successors(steps, stack.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        for index, step in enumerate(steps):
            if index not in seen and (index - 1) in seen:
                problems.append(
                    Problem(flow.path, step.line, f"step {step.id!r} can never be reached: the step before it always jumps or exits", "warning")
                )
    return problems


def loops_without_wait(flow: Flow) -> list[Problem]:
    """A goto that can come back to itself without passing a wait would spin forever at once."""
    problems = []
    for _, steps in flow.step_lists:
        for index, step in enumerate(steps):
            if not isinstance(step.action, Goto):
                continue
            seen: set[int] = set()
            stack = list(successors(steps, index))
            while stack:
                current = stack.pop()
                if current in seen or isinstance(steps[current].action, WAITS):
                    continue
                if current == index:
                    problems.append(
                        Problem(flow.path, step.line, f"goto {step.action.target!r} makes a loop with no wait in it: a lead would go round it at once", "warning")
                    )
                    break
                seen.add(current)
                stack.extend(successors(steps, current))
    return problems


def cart_without_purchase_stop(flow: Flow) -> list[Problem]:
    if not isinstance(flow, Sequence) or flow.start_on.event not in CART_EVENTS:
        return []
    if any(matcher.event == "purchase" and not matcher.properties for matcher in flow.stop_on):
        return []
    stops_on_wait = any(
        isinstance(step.action, WaitForEvent) and step.action.matcher.event == "purchase" for step in flow.steps
    )
    if stops_on_wait:
        return []
    return [
        Problem(flow.path, flow.line, f"sequence {flow.slug!r} starts on {flow.start_on.event} but no purchase stops it: buyers would get cart reminders; add `stop_on: [{{event: purchase}}]`", "warning")
    ]


def flow_warnings(flow: Flow) -> list[Problem]:
    return [*unreachable_steps(flow), *loops_without_wait(flow), *cart_without_purchase_stop(flow)]
