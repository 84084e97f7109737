"""Recording which steps each flow had, so edits never strand a lead.

Each enrollment points at the flow version it was last scheduled with. When
the seller removes or renames the step a lead waits on, the engine resumes the
lead at the next step of that version which still exists. Each version also
keeps every step in words (`domain.words.step_text`), so `validate --plan` can
say which waiting leads sit on a step whose content an edit changes under the
same id, and how it read before.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from autofunnel.domain.model import Flow
from autofunnel.domain.per_flow import PerFlow
from autofunnel.domain.words import step_text
from autofunnel.store.models import FlowVersion
from autofunnel.store.queries import insert_ignoring


def step_layout(flow: Flow) -> dict[str, list[str]]:
    """Stage name ('' for a sequence) → its step ids in order."""
    return {stage: [step.id for step in steps] for stage, steps in flow.step_lists}


def step_texts(flow: Flow) -> dict[str, dict[str, str]]:
    """Stage name ('' for a sequence) → step id → the step in words."""
    return {stage: {step.id: step_text(step) for step in steps} for stage, steps in flow.step_lists}


def _digest(layout: dict[str, list[str]], texts: dict[str, dict[str, str]]) -> str:
    shape = {"steps": layout, "texts": texts}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_Shape = tuple[dict[str, list[str]], dict[str, dict[str, str]], str]


def _work_out_shape(flow: Flow) -> _Shape:
    layout, texts = step_layout(flow), step_texts(flow)
    return layout, texts, _digest(layout, texts)


_shape = PerFlow(_work_out_shape)
"""Each loaded flow's layout, words and digest: every subscription, event batch and scheduler pass asks for its version."""


def current_version_ids(session: Session, flows: list[Flow], now: datetime) -> dict[str, int]:
    """The version row of each flow as it is now, created when new."""
    wanted = {flow.slug: _shape(flow) for flow in flows}
    if not wanted:
        return {}
    found = _existing(session, wanted)
    missing = [
        {"flow": slug, "digest": digest, "steps": layout, "texts": texts, "created_at": now}
        for slug, (layout, texts, digest) in wanted.items()
        if slug not in found
    ]
    if missing:
        session.execute(insert_ignoring(session, FlowVersion.__table__, ("flow", "digest")), missing)
        found = _existing(session, wanted)
    return found


def _existing(session: Session, wanted: dict[str, _Shape]) -> dict[str, int]:
    rows = session.connection().execute(_existing_statement(), {"flows": list(wanted), "digests": [digest for _, _, digest in wanted.values()]})
    return {flow: id_ for flow, digest, id_ in rows if wanted[flow][2] == digest}


@functools.cache
def _existing_statement() -> Select[tuple[str, str, int]]:
    return select(FlowVersion.flow, FlowVersion.digest, FlowVersion.id).where(
        FlowVersion.flow.in_(bindparam("flows", expanding=True)), FlowVersion.digest.in_(bindparam("digests", expanding=True)),
    )


def layouts_by_id(session: Session, ids: set[int]) -> dict[int, dict[str, list[str]]]:
    if not ids:
        return {}
    return {row.id: row.steps for row in session.connection().execute(_layouts_statement(), {"ids": sorted(ids)})}


@functools.cache
def _layouts_statement() -> Select[tuple[int, Any]]:
    """Built once: every scheduler pass reads the layouts of its enrollments' versions."""
    return select(FlowVersion.id, FlowVersion.steps).where(FlowVersion.id.in_(bindparam("ids", expanding=True)))

