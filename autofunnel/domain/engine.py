"""Step decisions: where a lead goes next in a stage or sequence, and why.

`advance` takes an enrollment's cursor, the flow, what is known about the lead
and the time, and returns decisions as values — send this, skip that (with a
reason), wait until then — plus the new cursor. It performs nothing; services
turn decisions into rows in one transaction. Being pure, every rule here (stage
ends, deadlines, conditions, goto, caps, windows) is tested exhaustively
without a database.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from autofunnel.domain.conditions import ConditionFacts, EventFact, holds
from autofunnel.domain.durations import format_duration
from autofunnel.domain.model import (
    AddTag,
    EventMatcher,
    Exit,
    Flow,
    Funnel,
    Goto,
    Notify,
    RemoveTag,
    Send,
    SetFields,
    Step,
    Wait,
    WaitForEvent,
    WaitUntilDeadline,
)
from autofunnel.domain.sending import check_cap, next_allowed
from autofunnel.domain.statuses import EndCause, EnrollmentStatus, LeadStatus, SUPPRESSED



def suppression_reason(status: str) -> str:
    """Why an enrollment ended because its lead may no longer be emailed."""
    return f"lead {status}"


def ended_by_suppression(cause: str | None) -> bool:
    """Did this enrollment end because its lead was suppressed (not by its own steps)?"""
    return cause == EndCause.SUPPRESSED


MAX_STEPS_PER_ADVANCE = 100
"""A goto loop without a wait would otherwise spin; past this many steps the lead leaves."""


@dataclass(frozen=True)
class Parked:
    """What an enrollment waits on at its current step.

    `kind` is `time` (a wait or a deadline: resume at due time), `event` (a
    `wait: {event…}`: resume on the event or at the timeout), or `confirm` (a
    pending lead: resume when the double opt-in is confirmed).
    """

    kind: Literal["time", "event", "confirm"]
    matcher: EventMatcher | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class Cursor:
    """An enrollment's place: the next step (None once finished), what it waits on, visits per step."""

    step_id: str | None
    parked: Parked | None = None
    visits: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LeadFacts:
    status: str
    email: str
    timezone: str | None = None
    owner: str | None = None
    tags: frozenset[str] = frozenset()
    fields: Mapping[str, Any] = field(default_factory=dict)
    deadlines: Mapping[str, datetime] = field(default_factory=dict)
    assignments: Mapping[str, str] = field(default_factory=dict)
    held_out: bool = False
    opened: frozenset[str] = frozenset()
    clicked: frozenset[str] = frozenset()
    events: Sequence[EventFact] = ()
    recent_sends: Sequence[datetime] = ()


# Decisions ----------------------------------------------------------------------


@dataclass(frozen=True)
class SendEmail:
    step_id: str
    occurrence: int
    template: str
    variant: str | None = None
    reason: str = "sent"


@dataclass(frozen=True)
class NotifyPerson:
    step_id: str
    occurrence: int
    template: str
    to: str
    reason: str = "notified"


@dataclass(frozen=True)
class StartDeadline:
    step_id: str
    name: str
    at: datetime


@dataclass(frozen=True)
class AssignVariant:
    step_id: str
    template: str


@dataclass(frozen=True)
class ChangeTag:
    step_id: str
    tag: str
    add: bool


@dataclass(frozen=True)
class ChangeFields:
    step_id: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Skip:
    step_id: str
    reason: str


@dataclass(frozen=True)
class Jump:
    step_id: str
    target: str


@dataclass(frozen=True)
class WaitDecision:
    step_id: str
    until: datetime | None
    reason: str


@dataclass(frozen=True)
class Leave:
    """The enrollment ends: finished its steps, exited, or stopped by the lead's status."""

    step_id: str | None
    status: EnrollmentStatus
    reason: str
    cause: EndCause


Decision = SendEmail | NotifyPerson | StartDeadline | AssignVariant | ChangeTag | ChangeFields | Skip | Jump | WaitDecision | Leave


@dataclass(frozen=True)
class Advance:
    decisions: tuple[Decision, ...]
    cursor: Cursor
    due_at: datetime | None
    status: EnrollmentStatus

    @property
    def ended(self) -> bool:
        return self.status != EnrollmentStatus.ACTIVE


def resume_after_removed(step_id: str, previous_ids: Sequence[str], current_ids: Sequence[str]) -> str | None:
    """The step a lead continues with when its step no longer exists: the first
    step after it, in the order the lead was scheduled with, that still exists."""
    if step_id in previous_ids:
        for candidate in previous_ids[previous_ids.index(step_id) + 1 :]:
            if candidate in current_ids:
                return candidate
    return None


def advance(
    cursor: Cursor,
    flow: Flow,
    steps: Sequence[Step],
    lead: LeadFacts,
    now: datetime,
    rng: random.Random,
    previous_ids: Sequence[str] = (),
    scheduled: datetime | None = None,
) -> Advance:
    """Run a lead's steps from its cursor until something makes it wait or leave.

    `steps` are the stage's (or sequence's) current steps; `previous_ids` the step
    order the enrollment was last scheduled with, to resume after a removed step.
    `scheduled` is when this run was due: waits count from then, so a late pass
    keeps the schedule — but only until the first email of the pass, after which
    waits count from now, so a long pause never sends a burst of emails at once.
    """
    return _Run(cursor, flow, steps, lead, now, rng, previous_ids, scheduled).go()


class _Run:
    def __init__(
        self, cursor: Cursor, flow: Flow, steps: Sequence[Step], lead: LeadFacts, now: datetime,
        rng: random.Random, previous_ids: Sequence[str], scheduled: datetime | None,
    ) -> None:
        self.flow, self.steps, self.lead, self.now, self.rng = flow, steps, lead, now, rng
        self.base = min(scheduled, now) if scheduled is not None else now
        self.sent = False
        self.ids = [step.id for step in steps]
        self.cursor = cursor
        self.previous_ids = previous_ids
        self.visits = dict(cursor.visits)
        self.tags = set(lead.tags)
        self.fields = dict(lead.fields)
        self.deadlines = dict(lead.deadlines)
        self.decisions: list[Decision] = []

    def done(self, step_id: str | None, status: EnrollmentStatus, cause: EndCause, reason: str) -> Advance:
        self.decisions.append(Leave(step_id, status, reason, cause))
        return Advance(tuple(self.decisions), Cursor(None, None, self.visits), None, status)

    def park(self, step_id: str, parked: Parked | None, until: datetime | None, reason: str) -> Advance:
        self.decisions.append(WaitDecision(step_id, until, reason))
        return Advance(tuple(self.decisions), Cursor(step_id, parked, self.visits), until, EnrollmentStatus.ACTIVE)

    def facts(self) -> ConditionFacts:
        return ConditionFacts(
            now=self.now, tags=frozenset(self.tags), fields=self.fields, deadlines=self.deadlines,
            events=self.lead.events, opened=self.lead.opened, clicked=self.lead.clicked,
        )

    def go(self) -> Advance:
        if self.lead.status in SUPPRESSED:
            return self.done(self.cursor.step_id, EnrollmentStatus.EXITED, EndCause.SUPPRESSED, suppression_reason(self.lead.status))
        step_id = self.cursor.step_id
        parked = self.cursor.parked
        if step_id is not None and step_id not in self.ids:
            step_id = resume_after_removed(step_id, self.previous_ids, self.ids)
            parked = None
            if step_id is None:
                return self.done(None, EnrollmentStatus.DONE, EndCause.FINISHED, "its step was removed from the funnel; no later step remains")
        if self.lead.status == LeadStatus.PENDING:
            if step_id is None:
                return self.done(None, EnrollmentStatus.DONE, EndCause.FINISHED, "no steps")
            return self.park(step_id, Parked("confirm"), None, "waiting for double opt-in confirmation")
        index = self.ids.index(step_id) if step_id is not None else len(self.ids)
        if parked is not None:
            if parked.kind == "confirm":
                parked = None
            else:
                index += 1
                parked = None
        for _ in range(MAX_STEPS_PER_ADVANCE):
            if index >= len(self.steps):
                return self.done(None, EnrollmentStatus.DONE, EndCause.FINISHED, "all steps done")
            step = self.steps[index]
            outcome = self.run_step(step)
            if isinstance(outcome, Advance):
                return outcome
            index = outcome
        return self.done(self.steps[index].id if index < len(self.steps) else None, EnrollmentStatus.EXITED, EndCause.LOOP, f"more than {MAX_STEPS_PER_ADVANCE} steps without a wait: a goto loop")

    def run_step(self, step: Step) -> Advance | int:
        """Execute one step: the index of the next step, or an Advance that stops here."""
        index = self.ids.index(step.id)
        action = step.action
        if isinstance(action, Wait):
            until = self.wait_end(action.duration)
            if until is None:
                self.decisions.append(WaitDecision(step.id, self.base, f"waited {format_duration(action.duration)}; over by the time this pass ran"))
                return index + 1
            return self.park(step.id, Parked("time"), until, f"waiting {format_duration(action.duration)}")
        if isinstance(action, WaitUntilDeadline):
            moment = self.deadlines.get(action.deadline)
            if moment is None:
                self.decisions.append(Skip(step.id, f"deadline {action.deadline!r} was never started"))
                return index + 1
            if moment <= self.now:
                self.decisions.append(Skip(step.id, f"deadline {action.deadline!r} already passed"))
                return index + 1
            return self.park(step.id, Parked("time"), moment, f"waiting until deadline {action.deadline!r}")
        if isinstance(action, WaitForEvent):
            until = self.wait_end(action.timeout)
            if until is None:
                self.decisions.append(WaitDecision(step.id, self.base, f"the wait for {action.matcher.event} timed out by the time this pass ran"))
                return index + 1
            start = self.now if self.sent else self.base
            return self.park(step.id, Parked("event", action.matcher, start), until, f"waiting for {action.matcher.event} or the timeout")
        if not holds(step.condition, self.facts()):
            self.decisions.append(Skip(step.id, "condition false"))
            return index + 1
        if isinstance(action, Send):
            return self.send(step, action, index)
        if isinstance(action, Notify):
            return self.notify(step, action, index)
        self.visit(step)
        if isinstance(action, AddTag):
            self.tags.add(action.tag)
            self.decisions.append(ChangeTag(step.id, action.tag, True))
        elif isinstance(action, RemoveTag):
            self.tags.discard(action.tag)
            self.decisions.append(ChangeTag(step.id, action.tag, False))
        elif isinstance(action, SetFields):
            self.fields.update(action.values)
            self.decisions.append(ChangeFields(step.id, dict(action.values)))
        elif isinstance(action, Goto):
            self.decisions.append(Jump(step.id, action.target))
            return self.ids.index(action.target)
        elif isinstance(action, Exit):
            self.decisions.append(Leave(step.id, EnrollmentStatus.EXITED, "exit step", EndCause.EXIT_STEP))
            return Advance(tuple(self.decisions), Cursor(None, None, self.visits), None, EnrollmentStatus.EXITED)
        return index + 1

    def wait_end(self, duration: timedelta) -> datetime | None:
        """When a wait reached now ends, or None if, counted from when it was due, it is already over."""
        if self.sent:
            return self.now + duration
        until = self.base + duration
        if until <= self.now:
            self.base = until
            return None
        return until

    def visit(self, step: Step) -> int:
        self.visits[step.id] = self.visits.get(step.id, 0) + 1
        return self.visits[step.id]

    def gate(self, step: Step) -> Advance | None:
        """Send window, quiet days and frequency cap: defer (stay on this step) or None to go on."""
        rules = self.flow.rules
        allowed = next_allowed(self.now, rules, self.lead.timezone)
        if allowed > self.now:
            return self.park(step.id, None, allowed, "outside the send window or on a quiet day")
        return None

    def send(self, step: Step, action: Send, index: int) -> Advance | int:
        if self.held_out():
            self.start_deadline(step, action)
            self.visit(step)
            self.decisions.append(Skip(step.id, "holdout: this lead gets none of the funnel's emails"))
            return index + 1
        deferred = self.gate(step)
        if deferred is not None:
            return deferred
        verdict = check_cap(self.now, self.flow.rules.frequency_cap if action.capped else None, self.lead.recent_sends)
        if not verdict.ok:
            if verdict.defer_until is not None:
                resume = next_allowed(verdict.defer_until, self.flow.rules, self.lead.timezone)
                return self.park(step.id, None, resume, "frequency cap reached; deferred")
            self.start_deadline(step, action)
            self.visit(step)
            self.decisions.append(Skip(step.id, "capped: frequency cap reached"))
            return index + 1
        self.start_deadline(step, action)
        occurrence = self.visit(step)
        template, variant = self.pick_template(step, action)
        self.decisions.append(SendEmail(step.id, occurrence, template, variant))
        self.sent = True
        return index + 1

    def notify(self, step: Step, action: Notify, index: int) -> int:
        occurrence = self.visit(step)
        if self.held_out():
            self.decisions.append(Skip(step.id, "holdout: this lead gets none of the funnel's emails"))
            return index + 1
        to = self.lead.owner if action.to_owner else action.target
        if not to:
            self.decisions.append(Skip(step.id, "no owner to notify"))
            return index + 1
        self.decisions.append(NotifyPerson(step.id, occurrence, action.template, to))
        return index + 1

    def held_out(self) -> bool:
        return isinstance(self.flow, Funnel) and self.lead.held_out

    def start_deadline(self, step: Step, action: Send) -> None:
        """A personal deadline starts once; reaching its step again does not extend it."""
        spec = action.deadline
        if spec is None or spec.name in self.deadlines:
            return
        moment = self.now + spec.duration
        self.deadlines[spec.name] = moment
        self.decisions.append(StartDeadline(step.id, spec.name, moment))

    def pick_template(self, step: Step, action: Send) -> tuple[str, str | None]:
        if not action.variants:
            return action.name, None
        chosen = self.lead.assignments.get(step.id)
        names = [variant.template for variant in action.variants]
        if chosen not in names:
            chosen = self.rng.choices(names, weights=[variant.weight for variant in action.variants])[0]
            self.decisions.append(AssignVariant(step.id, chosen))
        return chosen, chosen


def wake_matches(parked: Parked | None, event_type: str, properties: Mapping[str, Any], at: datetime) -> bool:
    """Does this event end the wait? Only events that happened after the wait began do."""
    if parked is None or parked.kind != "event" or parked.matcher is None or properties.get("bot") is True:
        return False
    if parked.since is not None and at < parked.since:
        return False
    return parked.matcher.matches(event_type, properties)

