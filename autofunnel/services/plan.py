"""`validate --plan`: what an edit of the project's files will do to the leads already in its flows.

The leads waiting on each step are counted where they are stored (active
enrollments, with the flow version each was last scheduled with), and each
group's fate is decided by the rule the engine applies when it meets them:
`resume_after_removed` for a step whose id is gone, and the scheduler's
ending of enrollments whose stage, funnel or sequence is gone. A step kept
under its id but written differently (compared in words, `domain.words`, with
the version the leads were scheduled with) keeps its leads where they are,
at the due time they already have, and runs as it is now written.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from autofunnel.domain.engine import resume_after_removed
from autofunnel.domain.model import Flow
from autofunnel.services.enrollments import active_enrollment
from autofunnel.services.versions import step_layout, step_texts
from autofunnel.store.db import Database
from autofunnel.store.models import Enrollment, FlowVersion


@dataclass(frozen=True)
class PlanRow:
    flow: str
    stage: str
    step: str | None
    leads: int
    outcome: str


def edit_plan(db: Database, flows: dict[str, Flow]) -> list[PlanRow]:
    """One row per (flow, stage, step) whose waiting leads the files would move or end; unaffected ones are left out.

    The leads waiting on each step are counted off the index of active enrollments, and
    split by the flow version they were scheduled with only at a step whose fate differs
    between versions: with no edit pending, that is none, where counting every active
    enrollment by version read each one from the table (0.94 s at 877k on SQLite).
    """
    counted: dict[tuple[str, str, str | None, str], int] = {}
    with db.read() as session:
        steps = session.execute(
            select(Enrollment.flow, Enrollment.stage, Enrollment.step_id, func.count())
            .where(active_enrollment())
            .group_by(Enrollment.flow, Enrollment.stage, Enrollment.step_id)
        ).all()
        versions: dict[str, dict[int | None, tuple[dict[str, list[str]], dict[str, dict[str, str]]]]] = {}
        for version in session.execute(select(FlowVersion.id, FlowVersion.flow, FlowVersion.steps, FlowVersion.texts)):
            versions.setdefault(version.flow, {})[version.id] = (version.steps or {}, version.texts or {})
        for slug, stage, step_id, leads in steps:
            # A lead without a version (or with one since removed) is judged with no layout and no words.
            outcomes = {
                version: _outcome(flows.get(slug), stage, step_id, layout.get(stage, []), texts.get(stage, {}).get(step_id or ""))
                for version, (layout, texts) in {None: ({}, {}), **versions.get(slug, {})}.items()
            }
            if len(set(outcomes.values())) == 1:
                per_version = [(None, leads)]
            else:
                per_version = session.execute(
                    select(Enrollment.version_id, func.count())
                    .where(active_enrollment(), Enrollment.flow == slug, Enrollment.stage == stage, Enrollment.step_id.is_(None) if step_id is None else Enrollment.step_id == step_id)
                    .group_by(Enrollment.version_id)
                ).all()
            for version, n in per_version:
                outcome = outcomes.get(version, outcomes[None])
                if outcome is not None:
                    key = (slug, stage, step_id, outcome)
                    counted[key] = counted.get(key, 0) + n
    return [PlanRow(slug, stage, step, leads, outcome) for (slug, stage, step, outcome), leads in sorted(counted.items(), key=lambda item: item[0][:3] + (item[0][3],))]


def _outcome(flow: Flow | None, stage: str, step_id: str | None, previous_ids: list[str], before: str | None) -> str | None:
    if flow is None:
        return "funnel or sequence removed from the project: their enrollments end; nothing more is sent from it"
    current = step_layout(flow)
    if stage not in current:
        return "stage removed from the project: their enrollments end; nothing more is sent from it"
    if step_id is None:
        return None
    if step_id in current[stage]:
        now = step_texts(flow)[stage][step_id]
        if before is None or before == now:
            return None
        if before.startswith("wait"):
            return f"step changed from “{before}” to “{now}”: they wake at the time set when they started waiting, then go on as now written; later arrivals get the new step"
        return f"step changed from “{before}” to “{now}”: it runs as now written at their due time"
    following = resume_after_removed(step_id, previous_ids, current[stage])
    if following is None:
        return "step removed or renamed, no later step of theirs left: done with the stage at their due time"
    return f"step removed or renamed: continue with {following!r} at their due time"
