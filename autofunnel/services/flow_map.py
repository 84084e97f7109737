"""The flow map: a funnel or sequence file drawn as its stages and steps, with
who waits where now and what each email did.

Klaviyo and ActiveCampaign put counts on their flow builders' nodes; this puts
them on the seller's own file. Waiting counts are the active enrollments whose
step pointer is that step — parked on a wait, held by a send window, or due to
run it next — in one grouped query over `ix_enrollments_waiting`. A funnel's
email figures (sent, and first human opens and clicks) are added up from the
report's running tallies for the period's cohort, the rows the report's
per-email table adds up, so the map and `GET /api/v1/reports` agree; one query
gives all three figures for every step. A sequence has no report, so its
emails are counted from their deliveries sent in the period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select

from autofunnel.domain.durations import format_duration
from autofunnel.domain.model import (
    AddTag,
    AllOf,
    AnyOf,
    Clicked,
    DeadlinePassed,
    EventMatcher,
    Exit,
    FieldIs,
    Funnel,
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
from autofunnel.services.project import matcher_text
from autofunnel.services.report import DEFAULT_DAYS
from autofunnel.services.runtime import Runtime
from autofunnel.services.lead_search import ACTIVE
from autofunnel.store.models import CohortTally, Delivery, Enrollment


@dataclass(frozen=True)
class StepNode:
    id: str
    kind: str
    """send, wait, tag, untag, set, notify, goto, exit."""
    label: str
    condition: str | None
    deadline: str | None
    """"starts deadline NAME (DURATION)" on a send step that starts one."""
    waiting: int
    sent: int | None = None
    opened: int | None = None
    clicked: int | None = None


@dataclass(frozen=True)
class StageNode:
    name: str
    entry: str
    steps: tuple[StepNode, ...]
    waiting_elsewhere: int
    """Active enrollments pointing at a step id no longer in the file (they move on at their due time)."""


@dataclass(frozen=True)
class FlowMap:
    slug: str
    title: str
    kind: str
    start: date
    end: date
    stages: tuple[StageNode, ...]


def flow_map(rt: Runtime, slug: str, today: date, days: int = DEFAULT_DAYS) -> FlowMap:
    """The flow's stages and steps in file order, each with its leads waiting now and its emails' results."""
    flow = rt.flow(slug)
    start = today - timedelta(days=days - 1)
    with rt.db.read() as session:
        waiting = {
            (stage, step): n
            for stage, step, n in session.execute(
                select(Enrollment.stage, Enrollment.step_id, func.count())
                .where(Enrollment.flow == slug, ACTIVE)
                .group_by(Enrollment.stage, Enrollment.step_id)
            )
        }
    if isinstance(flow, Funnel):
        emails = _funnel_emails(rt, slug, start, today)
        stages = [(stage.name, _entry(stage.enter_on, first=index == 0), stage.steps) for index, stage in enumerate(flow.stages)]
    else:
        emails = _sequence_emails(rt, slug, start, today)
        stages = [("", _entry(flow.start_on, first=False), flow.steps)]
    nodes = []
    for name, entry, steps in stages:
        ids = {step.id for step in steps}
        elsewhere = sum(n for (stage, step), n in waiting.items() if stage == name and step not in ids)
        nodes.append(StageNode(name, entry, tuple(_node(step, waiting.get((name, step.id), 0), emails.get((name, step.id))) for step in steps), elsewhere))
    return FlowMap(flow.slug, flow.title, flow.kind, start, today, tuple(nodes))


EMAIL_FIGURES = ("sent", "opened", "clicked")


def _funnel_emails(rt: Runtime, slug: str, start: date, end: date) -> dict[tuple[str, str], tuple[int, int, int]]:
    """Sent, opened and clicked per step for the cohort that entered in the period: the report's tallies."""
    t = CohortTally
    found: dict[tuple[str, str], list[int]] = {}
    with rt.db.read() as session:
        for stage, step, figure, n in session.execute(
            select(t.stage, t.step, t.figure, func.sum(t.n))
            .where(t.funnel == slug, t.cohort_day >= start, t.cohort_day <= end, t.figure.in_(EMAIL_FIGURES))
            .group_by(t.stage, t.step, t.figure)
        ):
            found.setdefault((stage, step), [0, 0, 0])[EMAIL_FIGURES.index(figure)] += int(n or 0)
    return {key: (sent, opened, clicked) for key, (sent, opened, clicked) in found.items()}


def _sequence_emails(rt: Runtime, slug: str, start: date, end: date) -> dict[tuple[str, str], tuple[int, int, int]]:
    begin = datetime.combine(start, time(0), UTC)
    stop = datetime.combine(end + timedelta(days=1), time(0), UTC)
    with rt.db.read() as session:
        rows = session.execute(
            select(Delivery.stage, Delivery.step_id, func.count(), func.count(Delivery.opened_at), func.count(Delivery.clicked_at))
            .where(Delivery.flow == slug, Delivery.kind == "email", Delivery.status == "sent", Delivery.sent_at >= begin, Delivery.sent_at < stop)
            .group_by(Delivery.stage, Delivery.step_id)
        ).all()
    return {(stage, step): (int(sent), int(opened), int(clicked)) for stage, step, sent, opened, clicked in rows}


def _node(step: Step, waiting: int, emails: tuple[int, int, int] | None) -> StepNode:
    action = step.action
    kind, label = _describe(action)
    deadline = None
    if isinstance(action, Send) and action.deadline is not None:
        deadline = f"starts deadline {action.deadline.name} ({format_duration(action.deadline.duration)})"
    condition = condition_text(step.condition) if step.condition is not None else None
    if kind == "send":
        sent, opened, clicked = emails or (0, 0, 0)
        return StepNode(step.id, kind, label, condition, deadline, waiting, sent, opened, clicked)
    return StepNode(step.id, kind, label, condition, deadline, waiting)


def _describe(action: Any) -> tuple[str, str]:
    if isinstance(action, Send):
        variants = f" (variants {', '.join(v.template for v in action.variants)})" if action.variants else ""
        return "send", f"send {action.name}{variants}"
    if isinstance(action, Wait):
        return "wait", f"wait {format_duration(action.duration)}"
    if isinstance(action, WaitUntilDeadline):
        return "wait", f"wait until deadline {action.deadline}"
    if isinstance(action, WaitForEvent):
        return "wait", f"wait for {matcher_text(action.matcher)}, at most {format_duration(action.timeout)}"
    if isinstance(action, AddTag):
        return "tag", f"tag {action.tag}"
    if isinstance(action, RemoveTag):
        return "untag", f"untag {action.tag}"
    if isinstance(action, SetFields):
        return "set", "set " + ", ".join(f"{k} = {v!r}" for k, v in action.values.items())
    if isinstance(action, Notify):
        return "notify", f"notify {action.target} ({action.template})"
    if isinstance(action, Goto):
        return "goto", f"goto {action.target}"
    if isinstance(action, Exit):
        return "exit", "exit"
    return type(action).__name__.lower(), type(action).__name__


def _entry(matcher: EventMatcher | None, *, first: bool) -> str:
    if first or matcher is None:
        return "entered by subscribing"
    return f"entered on {matcher_text(matcher)}"


def condition_text(condition: Any) -> str:
    """An `if:` condition in words, short enough for a node of the map."""
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
