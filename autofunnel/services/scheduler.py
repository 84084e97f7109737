"""One scheduler pass: claim the enrollments whose time has come, run the engine
on each, and write its decisions — all in one transaction per batch.

Claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL, so any number of schedulers
can run at once without taking the same lead; on SQLite the batch is one
`BEGIN IMMEDIATE` transaction, which serializes writers. The cost of a pass is
what is due (the partial index on active rows' `due_at`), not every lead
(`store/due.py`). Emails are only queued here; delivery ids are handed out after
commit, and `services/sweep.py` finds the ones the broker lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from autofunnel.domain.engine import (
    Advance,
    AssignVariant,
    ChangeFields,
    ChangeTag,
    Decision,
    Leave,
    NotifyPerson,
    SendEmail,
    StartDeadline,
    advance,
)
from autofunnel.domain.model import Clicked, Flow, HasEvent, Opened, Step, walk_condition
from autofunnel.domain.per_flow import PerFlow
from autofunnel.domain.report import lead_split_values
from autofunnel.domain.words import decision_words
from autofunnel.domain.statuses import DeliveryStatus, EndCause, EnrollmentStatus
from autofunnel.services.enrollments import cursor_of, parked_to_json, timeline_row, write_timeline
from autofunnel.services.runtime import Runtime
from autofunnel.services.sweep import sweep
from autofunnel.services.tallies import fold_tallies, regroup_leads
from autofunnel.services.versions import current_version_ids, layouts_by_id
from autofunnel.store.due import claim_due
from autofunnel.store.lead_facts import LoadedFacts, Wanted, load_facts
from autofunnel.store.models import Assignment, Deadline, Delivery, Enrollment, Lead
from autofunnel.store.queries import bulk_insert, bulk_update, insert_returning

log = logging.getLogger(__name__)

BATCH = 500


@dataclass(frozen=True)
class DecisionLine:
    """One decision, as `tick` prints it."""

    email: str
    flow: str
    stage: str
    step_id: str | None
    decision: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.flow}/{self.stage}" if self.stage else self.flow
        step = f" {self.step_id}" if self.step_id else ""
        return f"{self.email} {where}{step}: {self.decision} — {self.reason}"


@dataclass
class TickReport:
    now: datetime
    enrollments: int = 0
    queued: list[int] = field(default_factory=list)
    lines: list[DecisionLine] = field(default_factory=list)
    more_due: bool = False


def tick(
    rt: Runtime, *, now: datetime | None = None, dry_run: bool = False, batch: int = BATCH,
    on_batch: Callable[[list[int]], None] | None = None, keep_going: Callable[[], bool] | None = None,
) -> TickReport:
    """Process everything due at `now`: batches until none is left (one batch on a dry run),
    or until `keep_going` says no after a batch (`more_due` is then set; the rest stays due).

    `on_batch` gets each batch's queued delivery ids right after its commit, so the
    first emails of a large wave are on their way while later batches are decided.
    """
    now = now or rt.clock.now()
    report = TickReport(now)
    versions: dict[str, int] | None = None
    size = batch
    while True:
        claimed: list[Any] = []
        lines_before = len(report.lines)
        try:
            with rt.db.transaction(rollback=dry_run) as session:
                rows = claimed = claim_due(session, now, size)
                if not rows:
                    break
                if versions is None:
                    versions = current_version_ids(session, list(rt.project.flows.values()), now)
                queued = _process(session, rt, rows, now, versions, report.lines)
        except Exception as exc:
            if dry_run or not claimed or _is_outage(exc):
                raise
            del report.lines[lines_before:]
            if size > 1:
                size = 1  # find the enrollment that fails, one at a time; the others go on
                continue
            _set_aside(rt, claimed[0], exc, now, report)
            size = batch
            continue
        report.enrollments += len(rows)
        if not dry_run:
            report.queued.extend(queued)
        if on_batch is not None and queued and not dry_run:
            on_batch(queued)
        if dry_run:
            report.more_due = len(rows) == batch
            break
        if keep_going is not None and not keep_going():
            report.more_due = True
            break
    return report


SET_ASIDE = timedelta(hours=1)
"""How long an enrollment whose step failed waits before it is tried again."""


def _is_outage(exc: Exception) -> bool:
    """The database went away: the whole pass stops and the next one tries again."""
    return isinstance(exc, OperationalError) or bool(getattr(exc, "connection_invalidated", False))


def _set_aside(rt: Runtime, row: Any, exc: Exception, now: datetime, report: TickReport) -> None:
    """One enrollment whose step cannot be decided must not hold back every lead due after it:
    it is pushed back an hour, with the error in the lead's timeline and the log, and the pass goes on."""
    log.exception("enrollment %s (lead %s, %s) failed at step %s; trying it again in an hour", row.id, row.lead_id, row.flow, row.step_id)
    reason = f"error: {type(exc).__name__}: {exc}"[:400] + f"; trying again at {(now + SET_ASIDE).isoformat()}"
    with rt.db.transaction() as session:
        session.execute(update(Enrollment).where(Enrollment.id == row.id, Enrollment.status == EnrollmentStatus.ACTIVE).values(due_at=now + SET_ASIDE))
        write_timeline(session, [timeline_row(row.lead_id, now, "error", reason, flow=row.flow, stage=row.stage, step_id=row.step_id)])
    report.lines.append(DecisionLine(f"lead {row.lead_id}", row.flow, row.stage, row.step_id, "error", reason))


def _process(session: Session, rt: Runtime, rows: Sequence[Any], now: datetime, versions: dict[str, int], lines: list[DecisionLine]) -> list[int]:
    flows = {row.flow: rt.project.flows.get(row.flow) for row in rows}
    present = [flow for flow in flows.values() if flow is not None]
    facts = load_facts(session, {row.lead_id for row in rows}, _wanted(present, now))
    layouts = layouts_by_id(session, {row.version_id for row in rows if row.version_id})

    deliveries: list[dict[str, Any]] = []
    new_deadlines: list[dict[str, Any]] = []
    new_assignments: list[dict[str, Any]] = []
    enrollment_updates: list[dict[str, Any]] = []
    changed: set[int] = set()

    for row in rows:
        lead = facts.profiles[row.lead_id]
        flow = flows[row.flow]
        stage_steps = _steps(flow, row.stage)
        if flow is None or stage_steps is None:
            reason = f"{'funnel or sequence' if flow is None else 'stage'} removed from the project"
            enrollment_updates.append(_ended(row.id, EnrollmentStatus.ENDED, EndCause.REMOVED, reason, now))
            lines.append(DecisionLine(lead.email, row.flow, row.stage, row.step_id, "ended", reason))
            continue
        previous = (layouts.get(row.version_id) or {}).get(row.stage, []) if row.version_id else []
        result = advance(cursor_of(row.step_id, row.waiting_for, row.visits), flow, stage_steps, facts.for_engine(row.lead_id, row.flow), now, rt.rng, previous, row.due_at)
        history = list(row.history or [])
        stamp = now.isoformat()
        for decision in result.decisions:
            step_id = getattr(decision, "step_id", None)
            verdict, reason = decision_words(decision)
            lines.append(DecisionLine(lead.email, row.flow, row.stage, step_id, verdict, reason))
            history.append([stamp, step_id, verdict, reason])
            _collect(decision, row, facts, now, deliveries, new_deadlines, new_assignments, changed)
        enrollment_updates.append({**_update_of(row.id, result, versions.get(row.flow), now), "history": history})

    _write_leads(session, facts, changed, now)
    if new_deadlines:
        bulk_insert(session, Deadline.__table__, new_deadlines, conflict=("lead_id", "flow", "name"))
    if new_assignments:
        bulk_insert(session, Assignment.__table__, new_assignments, conflict=("lead_id", "flow", "name"))
    queued: list[int] = []
    if deliveries:
        queued = [row.id for row in insert_returning(session, Delivery.__table__, deliveries, ("id",), conflict=("enrollment_id", "step_id", "occurrence"))]
    _write_enrollments(session, enrollment_updates)
    return queued


def _wanted(flows: list[Flow], now: datetime) -> Wanted:
    """What the batch's flows can ask of a lead: opens and clicks, events and recent sends
    are read only when some step's condition or a frequency cap looks at them."""
    asked = [_asked(flow) for flow in flows]
    caps = [cap for cap, _, _ in asked if cap]
    return Wanted(
        profiles=True, deadlines=True, assignments=True, sends_since=now - max(caps) if caps else None,
        engagement=any(engagement for _, engagement, _ in asked), event_types=sorted({kind for _, _, kinds in asked for kind in kinds}),
    )


def _work_out_asked(flow: Flow) -> tuple[timedelta | None, bool, frozenset[str]]:
    """The flow's frequency cap, whether a step looks at opens or clicks, and the event types steps ask about."""
    cap = flow.rules.frequency_cap
    return cap.per if cap else None, bool(_uses(flow, (Opened, Clicked))), frozenset(node.matcher.event for node in _uses(flow, (HasEvent,)))


_asked = PerFlow(_work_out_asked)
"""Worked out once per loaded flow: every pass walked every step's condition again."""


def _steps(flow: Flow | None, stage: str) -> tuple[Step, ...] | None:
    """The current steps of an enrollment's stage, or None when its flow or stage was removed."""
    if flow is None:
        return None
    try:
        return flow.steps_of(stage)
    except KeyError:
        return None


def _uses(flow: Flow, kinds: tuple[type, ...]) -> list[Any]:
    found = []
    for _, steps in flow.step_lists:
        for step in steps:
            found.extend(node for node in walk_condition(step.condition) if isinstance(node, kinds))
    return found


def _collect(
    decision: Decision, row: Any, facts: LoadedFacts, now: datetime, deliveries: list[dict[str, Any]],
    new_deadlines: list[dict[str, Any]], new_assignments: list[dict[str, Any]], changed: set[int],
) -> None:
    """Gather what a decision writes, and change the loaded facts in place so the
    lead's next enrollment in this batch decides from them."""
    lead = facts.profiles[row.lead_id]
    key = (row.lead_id, row.flow)
    base = {"lead_id": row.lead_id, "enrollment_id": row.id, "flow": row.flow, "stage": row.stage, "created_at": now, "status": DeliveryStatus.QUEUED, "attempts": 0, "dispatched_at": now}
    match decision:
        case SendEmail(step_id=step_id, occurrence=occurrence, template=template, variant=variant):
            deliveries.append({**base, "step_id": step_id, "occurrence": occurrence, "kind": "email", "template": template, "variant": variant, "to_address": lead.email})
            facts.recent_sends[row.lead_id].append(now)
        case NotifyPerson(step_id=step_id, occurrence=occurrence, template=template, to=to):
            deliveries.append({**base, "step_id": step_id, "occurrence": occurrence, "kind": "notify", "template": template, "variant": None, "to_address": to})
        case StartDeadline(name=name, at=at):
            facts.deadlines[key][name] = at
            new_deadlines.append({"lead_id": row.lead_id, "flow": row.flow, "name": name, "due_at": at, "created_at": now})
        case AssignVariant(step_id=step_id, template=template):
            facts.assignments[key][step_id] = template
            new_assignments.append({"lead_id": row.lead_id, "flow": row.flow, "name": step_id, "value": template, "assigned_at": now})
        case ChangeTag(tag=tag, add=add):
            if add and tag not in lead.tags:
                lead.tags = [*lead.tags, tag]
                changed.add(row.lead_id)
            elif not add and tag in lead.tags:
                lead.tags = [t for t in lead.tags if t != tag]
                changed.add(row.lead_id)
        case ChangeFields(values=values):
            lead.fields = {**lead.fields, **values}
            changed.add(row.lead_id)


def _ended(enrollment_id: int, status: str, cause: EndCause, reason: str, now: datetime) -> dict[str, Any]:
    return {
        "id": enrollment_id, "status": status, "step_id": None, "due_at": None, "waiting_for": None,
        "ended_at": now, "end_cause": cause, "end_reason": reason[:200],
    }


def _update_of(enrollment_id: int, result: Advance, version_id: int | None, now: datetime) -> dict[str, Any]:
    ended = result.ended
    leave = next((d for d in result.decisions if isinstance(d, Leave)), None)
    return {
        "id": enrollment_id, "status": result.status, "step_id": result.cursor.step_id, "due_at": result.due_at,
        "waiting_for": parked_to_json(result.cursor.parked), "ended_at": now if ended else None,
        "end_cause": leave.cause if ended and leave else None,
        "end_reason": leave.reason[:200] if ended and leave else None, "visits": dict(result.cursor.visits), "version_id": version_id,
    }


def _write_enrollments(session: Session, updates: list[dict[str, Any]]) -> None:
    table = Enrollment.__table__
    bulk_update(session, table, [u for u in updates if "visits" in u])
    bulk_update(session, table, [u for u in updates if "visits" not in u])


def _write_leads(session: Session, facts: LoadedFacts, changed: set[int], now: datetime) -> None:
    regroup_leads(
        session, {lead_id: lead_split_values(facts.profiles[lead_id].owner, facts.profiles[lead_id].fields) for lead_id in changed},
        lambda: bulk_update(session, Lead.__table__, [
            {"id": lead_id, "tags": facts.profiles[lead_id].tags, "fields": facts.profiles[lead_id].fields, "updated_at": now} for lead_id in sorted(changed)
        ]),
    )


@dataclass
class PassResult:
    lines: list[str]
    summary: str
    render_failures: list[str] = field(default_factory=list)
    """`flow/template` of each email of this pass whose template did not render."""


def fold_report_tallies(rt: Runtime) -> int:
    """Merge the report's tally rows written since the last fold; how many rows went."""
    with rt.db.transaction() as session:
        return fold_tallies(session)


def run_tick(rt: Runtime, *, dry_run: bool = False) -> PassResult:
    """`autofunnel tick`: one pass in this process — steps that are due, lost work swept up, emails
    sent, and the report's tallies folded (so a tick from cron keeps them small too)."""
    from autofunnel.services.delivery import deliver

    report = tick(rt, dry_run=dry_run)
    lines = [f"{report.now.isoformat()} {line}" for line in report.lines]
    if dry_run:
        more = "; more are due than one dry-run batch shows" if report.more_due else ""
        return PassResult(lines, f"dry run at {report.now.isoformat()}: {report.enrollments} enrollment(s) due, nothing written or sent{more}")
    from autofunnel.services.optin import opt_in_pass

    chores = opt_in_pass(rt, report.now)
    swept = sweep(rt, now=report.now)
    interrupted = swept.interrupted
    sent = deliver(rt, sorted(set(report.queued) | set(swept.retries) | set(swept.lost)))
    lines.extend(f"{report.now.isoformat()} {line}" for line in sent.lines)
    fold_report_tallies(rt)
    summary = (
        f"tick at {report.now.isoformat()}: {report.enrollments} enrollment(s) due; "
        f"{sent.sent} sent, {sent.failed} failed, {sent.skipped} skipped, {sent.retried} to retry"
        + (f"; {interrupted} interrupted delivery(ies) marked failed" if interrupted else "")
        + (f"; {chores.reminded} confirmation reminder(s) queued" if chores.reminded else "")
        + (f"; {chores.erased} never-confirmed lead(s) erased" if chores.erased else "")
    )
    return PassResult(lines, summary, sent.render_failures)
