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

from sqlalchemy import func, select

from autofunnel.domain.statuses import DeliveryStatus
from autofunnel.domain.model import EventMatcher, Funnel, Step
from autofunnel.domain.words import action_text, condition_text, deadline_text, matcher_text
from autofunnel.services.report import DEFAULT_DAYS
from autofunnel.services.runtime import Runtime
from autofunnel.services.enrollments import active_enrollment
from autofunnel.store.facts import CHANNEL_ROWS
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
                .where(Enrollment.flow == slug, active_enrollment())
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
            .where(t.funnel == slug, t.basis == "cohort", t.cohort_day >= start, t.cohort_day <= end, t.figure.in_(EMAIL_FIGURES), CHANNEL_ROWS)
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
            .where(Delivery.flow == slug, Delivery.kind == "email", Delivery.status == DeliveryStatus.SENT, Delivery.sent_at >= begin, Delivery.sent_at < stop)
            .group_by(Delivery.stage, Delivery.step_id)
        ).all()
    return {(stage, step): (int(sent), int(opened), int(clicked)) for stage, step, sent, opened, clicked in rows}


def _node(step: Step, waiting: int, emails: tuple[int, int, int] | None) -> StepNode:
    condition = condition_text(step.condition) if step.condition is not None else None
    if step.kind == "send":
        sent, opened, clicked = emails or (0, 0, 0)
        return StepNode(step.id, step.kind, action_text(step.action), condition, deadline_text(step.action), waiting, sent, opened, clicked)
    return StepNode(step.id, step.kind, action_text(step.action), condition, deadline_text(step.action), waiting)


def _entry(matcher: EventMatcher | None, *, first: bool) -> str:
    if first or matcher is None:
        return "entered by subscribing"
    return f"entered on {matcher_text(matcher)}"
