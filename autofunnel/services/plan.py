"""`validate --plan`: what an edit of the project's files will do to the leads already in its flows.

The leads waiting on each step are counted where they are stored (active
enrollments, with the flow version each was last scheduled with), and each
group's fate is decided by the rule the engine applies when it meets them:
`resume_after_removed` for a step whose id is gone, and the scheduler's
ending of enrollments whose stage, funnel or sequence is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from autofunnel.domain.engine import resume_after_removed
from autofunnel.domain.model import Flow
from autofunnel.services.versions import layouts_by_id, step_layout
from autofunnel.store.db import Database
from autofunnel.store.models import Enrollment


@dataclass(frozen=True)
class PlanRow:
    flow: str
    stage: str
    step: str | None
    leads: int
    outcome: str


def edit_plan(db: Database, flows: dict[str, Flow]) -> list[PlanRow]:
    """One row per (flow, stage, step) whose waiting leads the files would move or end; unaffected ones are left out."""
    with db.read() as session:
        groups = session.execute(
            select(Enrollment.flow, Enrollment.stage, Enrollment.step_id, Enrollment.version_id, func.count())
            .where(Enrollment.status == "active")
            .group_by(Enrollment.flow, Enrollment.stage, Enrollment.step_id, Enrollment.version_id)
        ).all()
        layouts = layouts_by_id(session, {version for _, _, _, version, _ in groups if version})
    counted: dict[tuple[str, str, str | None, str], int] = {}
    for slug, stage, step_id, version, leads in groups:
        outcome = _outcome(flows.get(slug), stage, step_id, (layouts.get(version) or {}).get(stage, []) if version else [])
        if outcome is not None:
            key = (slug, stage, step_id, outcome)
            counted[key] = counted.get(key, 0) + leads
    return [PlanRow(slug, stage, step, leads, outcome) for (slug, stage, step, outcome), leads in sorted(counted.items(), key=lambda item: item[0][:3] + (item[0][3],))]


def _outcome(flow: Flow | None, stage: str, step_id: str | None, previous_ids: list[str]) -> str | None:
    if flow is None:
        return "funnel or sequence removed from the project: their enrollments end; nothing more is sent from it"
    current = step_layout(flow)
    if stage not in current:
        return "stage removed from the project: their enrollments end; nothing more is sent from it"
    if step_id is None or step_id in current[stage]:
        return None
    following = resume_after_removed(step_id, previous_ids, current[stage])
    if following is None:
        return "step removed or renamed, no later step of theirs left: done with the stage at their due time"
    return f"step removed or renamed: continue with {following!r} at their due time"
