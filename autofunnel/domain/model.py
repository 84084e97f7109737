"""The funnel model: what a seller's YAML means, as frozen typed values.

Every step carries a stable `id` (explicit, or derived from its content and the
number of earlier steps with the same content) so that a lead waiting on a step
keeps its place when the seller inserts, removes or reorders other steps.
Every node also remembers the line it came from, for messages that point at it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from typing import Any, Literal

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class EventMatcher:
    """`{event: TYPE, prop: value…}`: the type, and properties that must be equal."""

    event: str
    properties: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, event_type: str, properties: Mapping[str, Any]) -> bool:
        if event_type != self.event:
            return False
        return all(key in properties and properties[key] == value for key, value in self.properties.items())


# Conditions -----------------------------------------------------------------


@dataclass(frozen=True)
class DeadlinePassed:
    name: str
    line: int = 0


@dataclass(frozen=True)
class HasTag:
    tag: str
    line: int = 0


@dataclass(frozen=True)
class FieldIs:
    """`{field: F, equals: v}`, `{field: F, in: [..]}` or `{field: F, exists: bool}`."""

    field: str
    op: Literal["equals", "in", "exists"]
    value: Any
    line: int = 0


@dataclass(frozen=True)
class HasEvent:
    matcher: EventMatcher
    line: int = 0


@dataclass(frozen=True)
class Opened:
    step_id: str
    line: int = 0


@dataclass(frozen=True)
class Clicked:
    step_id: str
    line: int = 0


@dataclass(frozen=True)
class AllOf:
    conditions: tuple[Condition, ...]
    line: int = 0


@dataclass(frozen=True)
class AnyOf:
    conditions: tuple[Condition, ...]
    line: int = 0


@dataclass(frozen=True)
class Not:
    condition: Condition
    line: int = 0


Condition = DeadlinePassed | HasTag | FieldIs | HasEvent | Opened | Clicked | AllOf | AnyOf | Not


def walk_condition(condition: Condition | None) -> Iterator[Condition]:
    """Every condition node, depth first, so checks need not recurse themselves."""
    if condition is None:
        return
    yield condition
    if isinstance(condition, (AllOf, AnyOf)):
        for child in condition.conditions:
            yield from walk_condition(child)
    elif isinstance(condition, Not):
        yield from walk_condition(condition.condition)


# Steps ----------------------------------------------------------------------


@dataclass(frozen=True)
class DeadlineSpec:
    """`deadline: {name: tripwire, in: 48h}` on a send step: starts the lead's personal deadline."""

    name: str
    duration: timedelta
    line: int = 0


@dataclass(frozen=True)
class Variant:
    template: str
    weight: float


@dataclass(frozen=True)
class Send:
    name: str
    variants: tuple[Variant, ...] = ()
    deadline: DeadlineSpec | None = None
    capped: bool = True
    """False: this email ignores the frequency cap (a purchase's thank-you); it still counts towards it."""

    @property
    def templates(self) -> tuple[str, ...]:
        """The templates a lead may receive: the variants, else the step's own name."""
        return tuple(v.template for v in self.variants) or (self.name,)


@dataclass(frozen=True)
class Wait:
    duration: timedelta


@dataclass(frozen=True)
class WaitUntilDeadline:
    deadline: str


@dataclass(frozen=True)
class WaitForEvent:
    matcher: EventMatcher
    timeout: timedelta


@dataclass(frozen=True)
class AddTag:
    tag: str


@dataclass(frozen=True)
class RemoveTag:
    tag: str


@dataclass(frozen=True)
class SetFields:
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Notify:
    """Email a person on the seller's side: the lead's `owner`, or a fixed address."""

    target: str
    template: str

    @property
    def to_owner(self) -> bool:
        return self.target == "owner"


@dataclass(frozen=True)
class Goto:
    target: str


@dataclass(frozen=True)
class Exit:
    pass


Action = Send | Wait | WaitUntilDeadline | WaitForEvent | AddTag | RemoveTag | SetFields | Notify | Goto | Exit
WAITS = (Wait, WaitUntilDeadline, WaitForEvent)


@dataclass(frozen=True)
class Step:
    id: str
    action: Action
    condition: Condition | None = None
    line: int = 0
    explicit_id: bool = False

    @property
    def kind(self) -> str:
        return _KIND_NAMES[type(self.action)]


_KIND_NAMES: dict[type, str] = {
    Send: "send",
    Wait: "wait",
    WaitUntilDeadline: "wait",
    WaitForEvent: "wait",
    AddTag: "tag",
    RemoveTag: "untag",
    SetFields: "set",
    Notify: "notify",
    Goto: "goto",
    Exit: "exit",
}


# Flows ----------------------------------------------------------------------


@dataclass(frozen=True)
class SendWindow:
    """`"09:00-21:00"` in the lead's local time; a window may wrap past midnight."""

    start: time
    end: time


@dataclass(frozen=True)
class FrequencyCap:
    max: int
    per: timedelta
    when_capped: Literal["defer", "skip"] = "defer"


@dataclass(frozen=True)
class Offer:
    name: str
    url: str
    expired_url: str
    deadline: str
    line: int = 0


@dataclass(frozen=True)
class Stage:
    name: str
    steps: tuple[Step, ...]
    enter_on: EventMatcher | None = None
    line: int = 0


@dataclass(frozen=True)
class SendingRules:
    """What both funnels and sequences may say about how their emails go out."""

    sender: str | None = None
    send_window: SendWindow | None = None
    quiet_days: frozenset[str] = frozenset()
    frequency_cap: FrequencyCap | None = None
    track_opens: bool | None = None
    """Whether emails carry the open pixel; None: AUTOFUNNEL_TRACK_OPENS decides."""


@dataclass(frozen=True)
class Funnel:
    slug: str
    title: str
    stages: tuple[Stage, ...]
    rules: SendingRules = SendingRules()
    offers: Mapping[str, Offer] = field(default_factory=dict)
    holdout: float = 0.0
    double_opt_in: bool | None = None
    form_thanks: str | None = None
    """The thank-you page's text after the subscribe form (`/f/<funnel>`), else a default."""
    form_redirect: str | None = None
    """Where the subscribe form sends the browser instead of the thank-you page."""
    consent_text: str | None = None
    """What a lead agrees to on the form and in the confirmation email, else AUTOFUNNEL_CONSENT_TEXT."""
    path: Path = Path()
    line: int = 1

    kind: Literal["funnel"] = "funnel"

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def steps_of(self, stage: str) -> tuple[Step, ...]:
        """The steps an enrollment in `stage` runs; KeyError when the stage is gone."""
        return self.stage(stage).steps

    @property
    def step_lists(self) -> tuple[tuple[str, tuple[Step, ...]], ...]:
        """(stage name, steps) pairs: the units within which `goto` jumps."""
        return tuple((stage.name, stage.steps) for stage in self.stages)

    @property
    def deadlines(self) -> dict[str, DeadlineSpec]:
        return defined_deadlines(self.step_lists)


@dataclass(frozen=True)
class Sequence:
    slug: str
    title: str
    start_on: EventMatcher
    steps: tuple[Step, ...]
    stop_on: tuple[EventMatcher, ...] = ()
    restart: bool = False
    rules: SendingRules = SendingRules()
    path: Path = Path()
    line: int = 1

    kind: Literal["sequence"] = "sequence"

    offers: Mapping[str, Offer] = field(default_factory=dict)

    def steps_of(self, stage: str) -> tuple[Step, ...]:
        """A sequence has one list of steps; its enrollments' stage is ''."""
        return self.steps

    @property
    def step_lists(self) -> tuple[tuple[str, tuple[Step, ...]], ...]:
        return (("", self.steps),)

    @property
    def deadlines(self) -> dict[str, DeadlineSpec]:
        return defined_deadlines(self.step_lists)


Flow = Funnel | Sequence


def defined_deadlines(step_lists: Iterable[tuple[str, tuple[Step, ...]]]) -> dict[str, DeadlineSpec]:
    """Deadlines started by send steps, by name; the first definition is the one shown."""
    found: dict[str, DeadlineSpec] = {}
    for _, steps in step_lists:
        for step in steps:
            if isinstance(step.action, Send) and step.action.deadline is not None:
                found.setdefault(step.action.deadline.name, step.action.deadline)
    return found


@dataclass(frozen=True)
class Project:
    """All funnels and sequences of one project folder, by slug."""

    root: Path
    flows: Mapping[str, Flow]

    @property
    def funnels(self) -> list[Funnel]:
        return [flow for flow in self.flows.values() if isinstance(flow, Funnel)]

    @property
    def sequences(self) -> list[Sequence]:
        return [flow for flow in self.flows.values() if isinstance(flow, Sequence)]
