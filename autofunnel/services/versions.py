"""Recording which step ids each flow had, so edits never strand a lead.

Each enrollment points at the flow version it was last scheduled with. When
the seller removes or renames the step a lead waits on, the engine resumes the
lead at the next step of that version which still exists.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from autofunnel.domain.model import Flow
from autofunnel.store.models import FlowVersion
from autofunnel.store.queries import insert_ignoring


def step_layout(flow: Flow) -> dict[str, list[str]]:
    """Stage name ('' for a sequence) → its step ids in order."""
    return {stage: [step.id for step in steps] for stage, steps in flow.step_lists}


def _digest(layout: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(layout, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def current_version_ids(session: Session, flows: list[Flow], now: datetime) -> dict[str, int]:
    """The version row of each flow's current layout, created when new."""
    wanted = {flow.slug: (step_layout(flow), _digest(step_layout(flow))) for flow in flows}
    if not wanted:
        return {}
    found = _existing(session, wanted)
    missing = [
        {"flow": slug, "digest": digest, "steps": layout, "created_at": now}
        for slug, (layout, digest) in wanted.items()
        if slug not in found
    ]
    if missing:
        session.execute(insert_ignoring(session, FlowVersion.__table__, ("flow", "digest")), missing)
        found = _existing(session, wanted)
    return found


def _existing(session: Session, wanted: dict[str, tuple[dict[str, list[str]], str]]) -> dict[str, int]:
    rows = session.execute(
        select(FlowVersion.flow, FlowVersion.digest, FlowVersion.id).where(
            FlowVersion.flow.in_(list(wanted)), FlowVersion.digest.in_([digest for _, digest in wanted.values()])
        )
    )
    return {flow: id_ for flow, digest, id_ in rows if wanted[flow][1] == digest}


def layouts_by_id(session: Session, ids: set[int]) -> dict[int, dict[str, list[str]]]:
    if not ids:
        return {}
    return {row.id: row.steps for row in session.execute(select(FlowVersion.id, FlowVersion.steps).where(FlowVersion.id.in_(ids)))}
