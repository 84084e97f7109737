"""The admin's leads list: search and filters, paged by id.

Paging is by keyset (leads with a smaller id than the last one shown), newest
first, and a page asks for one row more than it shows to know whether another
page follows: no OFFSET that grows with the page number and no COUNT over a
million leads. An email search is a prefix of the stored, lower-case address,
which the unique index on `email` answers in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, func, literal, select, text
from sqlalchemy.dialects.postgresql import JSONB

from autofunnel.services.runtime import Runtime
from autofunnel.store.models import LEAD_STATUSES, Enrollment, Lead, StageEntry
from autofunnel.store.queries import is_postgres

PAGE_SIZE = 50


@dataclass(frozen=True)
class LeadFilter:
    """What the seller typed and picked; empty strings mean "any"."""

    search: str = ""
    funnel: str = ""
    stage: str = ""
    status: str = ""
    step: str = ""
    before_id: int | None = None


@dataclass(frozen=True)
class LeadRow:
    id: int
    email: str
    first_name: str | None
    status: str
    tags: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class LeadPage:
    rows: tuple[LeadRow, ...]
    next_before_id: int | None
    """The `before_id` of the next page, or None when this is the last one."""


def find_leads(rt: Runtime, wanted: LeadFilter, page_size: int = PAGE_SIZE) -> LeadPage:
    """One page of leads matching every given filter, newest first."""
    stmt = select(Lead.id, Lead.email, Lead.first_name, Lead.status, Lead.tags, Lead.created_at)
    term = wanted.search.strip()
    with rt.db.read() as session:
        pg = is_postgres(session)
        if term:
            lowered = term.lower()
            if "@" in lowered or "." in lowered:
                stmt = stmt.where(Lead.email >= lowered, Lead.email < lowered + "\uffff")
            else:
                stmt = stmt.where(
                    (Lead.email >= lowered) & (Lead.email < lowered + "\uffff")
                    | (func.lower(Lead.first_name) == lowered)
                    | _has_tag(term, pg)
                )
        if wanted.status and wanted.status in LEAD_STATUSES:
            stmt = stmt.where(Lead.status == wanted.status)
        if wanted.funnel and wanted.step:
            stmt = stmt.where(exists().where(
                Enrollment.lead_id == Lead.id, Enrollment.flow == wanted.funnel, Enrollment.status == "active",
                Enrollment.step_id == wanted.step, *([Enrollment.stage == wanted.stage] if wanted.stage else []),
            ))
        elif wanted.funnel and wanted.stage:
            stmt = stmt.where(exists().where(
                StageEntry.lead_id == Lead.id, StageEntry.funnel == wanted.funnel, StageEntry.stage == wanted.stage,
                StageEntry.skipped.is_(False),
            ))
        elif wanted.funnel:
            stmt = stmt.where(exists().where(Enrollment.lead_id == Lead.id, Enrollment.flow == wanted.funnel))
        if wanted.before_id is not None:
            stmt = stmt.where(Lead.id < wanted.before_id)
        rows = session.execute(stmt.order_by(Lead.id.desc()).limit(page_size + 1)).all()
    shown = [LeadRow(r.id, r.email, r.first_name, r.status, tuple(r.tags or ()), r.created_at) for r in rows[:page_size]]
    return LeadPage(tuple(shown), shown[-1].id if len(rows) > page_size else None)


def _has_tag(tag: str, pg: bool) -> object:
    if pg:
        return Lead.tags.op("@>")(func.cast(literal(json.dumps([tag])), JSONB))
    return exists(select(literal(1)).select_from(text("json_each(leads.tags)")).where(text("json_each.value = :tag_value").bindparams(tag_value=tag)))
