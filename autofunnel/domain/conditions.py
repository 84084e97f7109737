"""Evaluating `if:` conditions against what is known about a lead at one moment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autofunnel.domain.model import (
    AllOf,
    AnyOf,
    Clicked,
    Condition,
    DeadlinePassed,
    FieldIs,
    HasEvent,
    HasTag,
    Not,
    Opened,
)


@dataclass(frozen=True)
class EventFact:
    """An event of the lead, as conditions see it."""

    type: str
    properties: Mapping[str, Any]
    at: datetime


@dataclass(frozen=True)
class ConditionFacts:
    now: datetime
    tags: frozenset[str]
    fields: Mapping[str, Any]
    deadlines: Mapping[str, datetime]
    events: Sequence[EventFact] = ()
    opened: frozenset[str] = frozenset()
    clicked: frozenset[str] = frozenset()


def holds(condition: Condition | None, facts: ConditionFacts) -> bool:
    """True when there is no condition, or when it holds now.

    A deadline that was never started has not passed; an event counts only if it
    happened by `now`, so events recorded late but dated later change nothing yet,
    and never when a link scanner made it (`bot: true`).
    """
    if condition is None:
        return True
    match condition:
        case DeadlinePassed(name=name):
            moment = facts.deadlines.get(name)
            return moment is not None and facts.now >= moment
        case HasTag(tag=tag):
            return tag in facts.tags
        case FieldIs(field=name, op=op, value=value):
            present = name in facts.fields and facts.fields[name] not in (None, "")
            if op == "exists":
                return present == bool(value)
            if not present:
                return False
            actual = facts.fields[name]
            return actual == value if op == "equals" else actual in value
        case HasEvent(matcher=matcher):
            return any(
                e.at <= facts.now and e.properties.get("bot") is not True and matcher.matches(e.type, e.properties)
                for e in facts.events
            )
        case Opened(step_id=step_id):
            return step_id in facts.opened
        case Clicked(step_id=step_id):
            return step_id in facts.clicked
        case AllOf(conditions=children):
            return all(holds(child, facts) for child in children)
        case AnyOf(conditions=children):
            return any(holds(child, facts) for child in children)
        case Not(condition=child):
            return not holds(child, facts)
    raise TypeError(f"unknown condition {condition!r}")
