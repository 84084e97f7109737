"""Leads run through a project in memory, on a virtual clock.

The same engine and event routing the services use, with plain Python
dictionaries instead of tables: what property tests hold the engine to (nothing
after a stage ends, nothing to a suppressed lead, every due step decided with a
reason). tests/test_simulate_agrees.py holds it to the real services, which
`autofunnel simulate` runs.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from autofunnel.domain.conditions import EventFact
from autofunnel.domain.engine import (
    Advance,
    AssignVariant,
    ChangeFields,
    ChangeTag,
    Cursor,
    LeadFacts,
    SendEmail,
    StartDeadline,
    advance,
    wake_matches,
)
from autofunnel.domain.model import Funnel, Project, Step
from autofunnel.domain.routing import ChangeStatus, EnterStage, Membership, SequenceRun, StartSequence, StopSequence, route_event
from autofunnel.domain.statuses import EnrollmentStatus, LeadStatus, SUPPRESSED


@dataclass
class SimEnrollment:
    id: int
    lead: str
    flow: str
    stage: str
    run: int
    cursor: Cursor
    due_at: datetime | None
    status: str = EnrollmentStatus.ACTIVE
    ended_seq: int | None = None


@dataclass
class SimLead:
    email: str
    status: str
    tags: set[str] = field(default_factory=set)
    fields: dict[str, Any] = field(default_factory=dict)
    deadlines: dict[str, dict[str, datetime]] = field(default_factory=dict)
    assignments: dict[str, dict[str, str]] = field(default_factory=dict)
    memberships: dict[str, Membership] = field(default_factory=dict)
    history: list[EventFact] = field(default_factory=list)
    sends: list[datetime] = field(default_factory=list)
    suppressed_seq: int | None = None


@dataclass(frozen=True)
class SimSend:
    at: datetime
    lead: str
    flow: str
    stage: str
    step_id: str
    occurrence: int
    enrollment: int
    seq: int


@dataclass(frozen=True)
class SimAdvance:
    at: datetime
    enrollment: SimEnrollment
    steps: tuple[Step, ...]
    start: Cursor
    result: Advance
    lead_status: str


class Simulator:
    def __init__(self, project: Project, rng: random.Random | None = None) -> None:
        self.project = project
        self.rng = rng or random.Random(0)
        self.leads: dict[str, SimLead] = {}
        self.enrollments: dict[int, SimEnrollment] = {}
        self.sends: list[SimSend] = []
        self.advances: list[SimAdvance] = []
        self.log: list[tuple[datetime, str, str]] = []
        self._queue: list[tuple[datetime, int]] = []
        self._next_id = 1
        self._seq = 0

    def _step(self) -> int:
        """A global order of what happened, for moments that share a timestamp."""
        self._seq += 1
        return self._seq

    def _enroll(self, lead: str, flow_slug: str, stage: str, run: int, at: datetime) -> None:
        flow = self.project.flows[flow_slug]
        steps = flow.steps_of(stage)
        enrollment = SimEnrollment(self._next_id, lead, flow_slug, stage, run, Cursor(steps[0].id if steps else None), at if steps else None, EnrollmentStatus.ACTIVE if steps else EnrollmentStatus.DONE)
        self._next_id += 1
        self.enrollments[enrollment.id] = enrollment
        if steps:
            heapq.heappush(self._queue, (at, enrollment.id))

    def _end(self, enrollment: SimEnrollment, status: str, at: datetime) -> None:
        if enrollment.status == EnrollmentStatus.ACTIVE:
            enrollment.status = status
            enrollment.due_at = None
            enrollment.ended_seq = self._step()
            self.log.append((at, enrollment.lead, f"{enrollment.flow}/{enrollment.stage or '-'} {status}"))

    def subscribe(self, email: str, funnel: str, at: datetime, *, pending: bool = False, held_out: bool = False) -> None:
        self.run_until(at)
        lead = self.leads.setdefault(email, SimLead(email, LeadStatus.PENDING if pending else LeadStatus.ACTIVE))
        flow = self.project.flows[funnel]
        assert isinstance(flow, Funnel)
        if funnel in lead.memberships:
            return
        first = flow.stages[0].name
        lead.memberships[funnel] = Membership(funnel, at, first, frozenset({first}))
        lead.assignments.setdefault(funnel, {})["holdout"] = "held_out" if held_out else "treated"
        self._enroll(email, funnel, first, 1, at)

    def record(self, email: str, event_type: str, properties: dict[str, Any], at: datetime) -> None:
        """Apply an event at its moment (events are fed in time order)."""
        self.run_until(at)
        lead = self.leads.setdefault(email, SimLead(email, LeadStatus.ACTIVE))
        fact = EventFact(event_type, properties, at)
        runs = {
            e.flow: SequenceRun(e.flow, e.run, at)
            for e in self.enrollments.values() if e.lead == email and e.status == EnrollmentStatus.ACTIVE and e.stage == ""
        }
        for effect in route_event(self.project, lead.status, lead.memberships, runs, lead.history, fact):
            match effect:
                case ChangeStatus(status=status):
                    lead.status = status
                    self.log.append((at, email, f"status {status}"))
                    if status in SUPPRESSED:
                        lead.suppressed_seq = lead.suppressed_seq or self._step()
                        for e in self.enrollments.values():
                            if e.lead == email:
                                self._end(e, EnrollmentStatus.EXITED, at)
                    elif status == LeadStatus.ACTIVE:
                        for e in self.enrollments.values():
                            if e.lead == email and e.status == EnrollmentStatus.ACTIVE and e.cursor.parked and e.cursor.parked.kind == "confirm":
                                e.due_at = at
                                heapq.heappush(self._queue, (at, e.id))
                case EnterStage(funnel=funnel, stage=stage, skipped=skipped):
                    for e in self.enrollments.values():
                        if e.lead == email and e.flow == funnel:
                            self._end(e, EnrollmentStatus.ENDED, at)
                    old = lead.memberships[funnel]
                    lead.memberships[funnel] = Membership(funnel, old.entered_at, stage, old.reached | {stage, *(n for n, _ in skipped)})
                    self.log.append((at, email, f"{funnel} enters {stage}"))
                    self._enroll(email, funnel, stage, 1, at)
                case StartSequence(sequence=slug):
                    runs_of = [e for e in self.enrollments.values() if e.lead == email and e.flow == slug]
                    for e in runs_of:
                        self._end(e, EnrollmentStatus.STOPPED, at)
                    self._enroll(email, slug, "", len(runs_of) + 1, at)
                case StopSequence(run=run):
                    for e in self.enrollments.values():
                        if e.lead == email and e.flow == run.sequence:
                            self._end(e, EnrollmentStatus.STOPPED, at)
        for e in self.enrollments.values():
            if e.lead == email and e.status == EnrollmentStatus.ACTIVE and wake_matches(e.cursor.parked, event_type, properties, at):
                e.due_at = at
                heapq.heappush(self._queue, (at, e.id))
        lead.history.append(fact)

    def run_until(self, until: datetime) -> None:
        """Advance every enrollment that falls due up to `until`, each at its own due time."""
        while self._queue and self._queue[0][0] <= until:
            due, enrollment_id = heapq.heappop(self._queue)
            enrollment = self.enrollments[enrollment_id]
            if enrollment.status != EnrollmentStatus.ACTIVE or enrollment.due_at != due:
                continue
            self._advance(enrollment, due)

    def _advance(self, enrollment: SimEnrollment, now: datetime) -> None:
        lead = self.leads[enrollment.lead]
        flow = self.project.flows[enrollment.flow]
        steps = flow.steps_of(enrollment.stage)
        deadlines = lead.deadlines.setdefault(flow.slug, {})
        assignments = lead.assignments.setdefault(flow.slug, {})
        facts = LeadFacts(
            status=lead.status, email=lead.email, tags=frozenset(lead.tags), fields=dict(lead.fields),
            deadlines=dict(deadlines), assignments=dict(assignments), held_out=assignments.get("holdout") == "held_out",
            events=list(lead.history), recent_sends=list(lead.sends),
        )
        start = enrollment.cursor
        result = advance(start, flow, steps, facts, now, self.rng, scheduled=enrollment.due_at)
        self.advances.append(SimAdvance(now, enrollment, steps, start, result, lead.status))
        for decision in result.decisions:
            match decision:
                case SendEmail(step_id=step_id, occurrence=occurrence):
                    self.sends.append(SimSend(now, lead.email, flow.slug, enrollment.stage, step_id, occurrence, enrollment.id, self._step()))
                    lead.sends.append(now)
                case StartDeadline(name=name, at=moment):
                    deadlines[name] = moment
                case AssignVariant(step_id=step_id, template=template):
                    assignments[step_id] = template
                case ChangeTag(tag=tag, add=add):
                    (lead.tags.add if add else lead.tags.discard)(tag)
                case ChangeFields(values=values):
                    lead.fields.update(values)
        enrollment.cursor = result.cursor
        enrollment.status = result.status
        enrollment.due_at = result.due_at
        if result.ended:
            enrollment.ended_seq = self._step()
        if result.due_at is not None and result.status == EnrollmentStatus.ACTIVE:
            heapq.heappush(self._queue, (result.due_at, enrollment.id))
