"""A flow's parts in a seller's words: what `validate` prints, the admin's flow map
draws, and `validate --plan` compares between the running and the edited files.

One wording for all three, so a step reads the same wherever it is shown, and a
change of wording is a change in one place.
"""

from __future__ import annotations

from autofunnel.domain.durations import format_duration
from autofunnel.domain.engine import (
    AssignVariant,
    ChangeFields,
    ChangeTag,
    Decision,
    Jump,
    Leave,
    NotifyPerson,
    SendEmail,
    Skip,
    StartDeadline,
    WaitDecision,
)
from autofunnel.domain.model import (
    Action,
    AddTag,
    AllOf,
    AnyOf,
    Clicked,
    Condition,
    DeadlinePassed,
    EventMatcher,
    Exit,
    FieldIs,
    Goto,
    HasEvent,
    HasTag,
    Not,
    Notify,
    Opened,
    RemoveTag,
    Send,
    SetFields,
    Step,
    Wait,
    WaitForEvent,
    WaitUntilDeadline,
)


def matcher_text(matcher: EventMatcher) -> str:
    """`purchase (product=mini-course)`: an event matcher as a seller wrote it."""
    props = " ".join(f"{key}={value}" for key, value in matcher.properties.items())
    return matcher.event + (f" ({props})" if props else "")


def action_text(action: Action) -> str:
    """`send tripwire-offer`, `wait 1d`, `notify owner (call-lead)`: what the step does."""
    if isinstance(action, Send):
        variants = f" (variants {', '.join(v.template for v in action.variants)})" if action.variants else ""
        return f"send {action.name}{variants}"
    if isinstance(action, Wait):
        return f"wait {format_duration(action.duration)}"
    if isinstance(action, WaitUntilDeadline):
        return f"wait until deadline {action.deadline}"
    if isinstance(action, WaitForEvent):
        return f"wait for {matcher_text(action.matcher)}, at most {format_duration(action.timeout)}"
    if isinstance(action, AddTag):
        return f"tag {action.tag}"
    if isinstance(action, RemoveTag):
        return f"untag {action.tag}"
    if isinstance(action, SetFields):
        return "set " + ", ".join(f"{k} = {v!r}" for k, v in action.values.items())
    if isinstance(action, Notify):
        return f"notify {action.target} ({action.template})"
    if isinstance(action, Goto):
        return f"goto {action.target}"
    if isinstance(action, Exit):
        return "exit"
    return type(action).__name__


def condition_text(condition: Condition) -> str:
    """An `if:` condition in words, short enough for a node of the flow map."""
    if isinstance(condition, DeadlinePassed):
        return f"deadline {condition.name} passed"
    if isinstance(condition, HasTag):
        return f"has tag {condition.tag}"
    if isinstance(condition, FieldIs):
        return f"field {condition.field} exists" if condition.op == "exists" else f"field {condition.field} {condition.op} {condition.value!r}"
    if isinstance(condition, HasEvent):
        return f"had {matcher_text(condition.matcher)}"
    if isinstance(condition, Opened):
        return f"opened {condition.step_id}"
    if isinstance(condition, Clicked):
        return f"clicked {condition.step_id}"
    if isinstance(condition, AllOf):
        return " and ".join(f"({condition_text(c)})" for c in condition.conditions)
    if isinstance(condition, AnyOf):
        return " or ".join(f"({condition_text(c)})" for c in condition.conditions)
    if isinstance(condition, Not):
        return f"not ({condition_text(condition.condition)})"
    return type(condition).__name__


def deadline_text(action: Action) -> str | None:
    """`starts deadline tripwire (48h)` for a send step that starts one."""
    if isinstance(action, Send) and action.deadline is not None:
        return f"starts deadline {action.deadline.name} ({format_duration(action.deadline.duration)})"
    return None


def step_text(step: Step) -> str:
    """Everything a step does, in one line: two steps with the same text behave the same."""
    parts = [action_text(step.action)]
    if step.condition is not None:
        parts.append(f"if {condition_text(step.condition)}")
    deadline = deadline_text(step.action)
    if deadline is not None:
        parts.append(deadline)
    if isinstance(step.action, Send) and not step.action.capped:
        parts.append("not capped")
    return ", ".join(parts)


def decision_words(decision: Decision) -> tuple[str, str]:
    """What the engine decided, as the scheduler prints it: a short kind and the reason."""
    match decision:
        case SendEmail(template=template, variant=variant):
            return "queued", f"email {template!r} queued" + (f" (variant {variant})" if variant else "")
        case NotifyPerson(template=template, to=to):
            return "queued", f"notification {template!r} to {to} queued"
        case StartDeadline(name=name, at=at):
            return "deadline", f"deadline {name!r} set for {at.isoformat()}"
        case AssignVariant(template=template):
            return "variant", f"variant {template!r} assigned"
        case ChangeTag(tag=tag, add=add):
            return ("tag" if add else "untag"), tag
        case ChangeFields(values=values):
            return "set", ", ".join(f"{k}={v!r}" for k, v in values.items())
        case Skip(reason=reason):
            return "skipped", reason
        case Jump(target=target):
            return "goto", f"jumped to {target!r}"
        case WaitDecision(until=until, reason=reason):
            return "waiting", reason + (f" until {until.isoformat()}" if until else "")
        case Leave(status=status, reason=reason):
            return status, reason
    raise TypeError(decision)
