"""The admin's leads list: search and filters, newest first, a page at a time.

Every query walks an index in `id` order and stops after one row more than a
page (that row only says a next page exists): no OFFSET that grows with the
page number and no COUNT over a million leads. Paging is by keyset (`before_id`:
leads with a smaller id than the last one shown).

Which index leads depends on what was asked, most selective first:

- a search text: up to three walks, merged (one when it has an `@`) — the email prefix (the
  unique index on the stored, lower-case address; on PostgreSQL `ix_leads_email_id`, which
  holds each match's id too, so a prefix thousands of leads share is not read from the
  table), the first name (`ix_leads_first_name`, in the few ways people write a name: as
  typed, `ann`, `Ann`, `ANN`), and one exact
  tag (a GIN index on PostgreSQL; SQLite cannot index a JSON array's members, so there
  the `lead_tags` table its triggers keep, migration `0019_sqlite_lead_tags`);
- a waiting step: the active enrollments on that step (`ix_enrollments_waiting`);
- a stage (or a funnel alone: its first stage): the stage entries
  (`ix_stage_entries_reached`);
- a status: `ix_leads_status_id` — first, when the status is not `active`: few leads have any other.

The other filters are checked on the rows that walk reaches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from autofunnel.domain.model import Funnel
from autofunnel.domain.statuses import LeadStatus
from autofunnel.services.runtime import Runtime
from autofunnel.services.enrollments import active_enrollment
from autofunnel.store.models import LEAD_TAGS, Enrollment, Lead, StageEntry
from autofunnel.store.queries import is_postgres

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class LeadFilter:
    """What the seller typed and picked; empty strings mean "any".

    `funnel` is a funnel or a sequence; `stage` a stage the lead reached (not jumped
    over) in that funnel; `step` a step id the lead waits on now (its stage is
    taken from the file when not given); `status` the lead's status.
    """

    search: str = ""
    funnel: str = ""
    stage: str = ""
    status: str = ""
    step: str = ""
    before_id: int | None = None


@dataclass(frozen=True)
class LeadStage:
    funnel: str
    stage: str
    """The furthest stage the lead reached in the funnel."""


@dataclass(frozen=True)
class LeadRow:
    id: int
    email: str
    first_name: str | None
    status: str
    tags: tuple[str, ...]
    created_at: datetime
    stages: tuple[LeadStage, ...] = ()
    """Where the lead stands in each funnel it entered, by funnel name."""
    entered_at: datetime | None = None
    """When the lead entered the filtered funnel (its first stage); without a funnel filter, when it was created."""


@dataclass(frozen=True)
class LeadPage:
    rows: tuple[LeadRow, ...]
    next_before_id: int | None
    """The `before_id` of the next page, or None when this is the last one."""

    @property
    def has_next(self) -> bool:
        return self.next_before_id is not None


def find_leads(rt: Runtime, wanted: LeadFilter, page_size: int = PAGE_SIZE) -> LeadPage:
    """One page of leads matching every given filter, newest first."""
    size = max(1, min(page_size, MAX_PAGE_SIZE))
    step_stage = _stage_of_step(rt, wanted)
    with rt.db.read() as session:
        pg = is_postgres(session)
        filters = _Filters(wanted, step_stage, pg, _first_stage(rt, wanted.funnel))
        ids = filters.page_ids(session, size + 1)
        more = len(ids) > size
        ids = ids[:size]
        rows = _rows(session, ids, wanted.funnel if filters.funnel_known else "")
    return LeadPage(tuple(rows), ids[-1] if more and ids else None)


def _stage_of_step(rt: Runtime, wanted: LeadFilter) -> str | None:
    """The stage holding the wanted step (a sequence's is ''), when the flow file says."""
    if not wanted.step or not wanted.funnel:
        return None
    if wanted.stage:
        return wanted.stage
    flow = rt.project.flows.get(wanted.funnel)
    if flow is None:
        return None
    for stage, steps in flow.step_lists:
        if any(step.id == wanted.step for step in steps):
            return stage
    return None


def _first_stage(rt: Runtime, slug: str) -> str | None:
    flow = rt.project.flows.get(slug) if slug else None
    return flow.stages[0].name if isinstance(flow, Funnel) and flow.stages else None


def name_spellings(term: str) -> list[str]:
    """The ways a first name is usually stored: as typed, lower, Capitalised, Title, UPPER."""
    return sorted({term, term.lower(), term.capitalize(), term.title(), term.upper()})


class _Filters:
    def __init__(self, wanted: LeadFilter, step_stage: str | None, pg: bool, first_stage: str | None) -> None:
        self.wanted = wanted
        self.term = wanted.search.strip()
        self.step_stage = step_stage
        self.pg = pg
        self.first_stage = first_stage
        self.funnel_known = bool(wanted.funnel)

    # The conditions on a lead row, each usable whatever walk leads --------------------

    def status(self) -> list[ColumnElement[bool]]:
        status = self.wanted.status
        if not status:
            return []
        return [Lead.status == status] if status in set(LeadStatus) else [literal(False)]

    def waiting(self) -> list[ColumnElement[bool]]:
        w = self.wanted
        if not w.step:
            return []
        if not w.funnel or self.step_stage is None:
            # A step the file no longer has (leads still parked on it) or no funnel given: any stage.
            by_flow = [Enrollment.flow == w.funnel] if w.funnel else []
            return [exists().where(Enrollment.lead_id == Lead.id, active_enrollment(), Enrollment.step_id == w.step, *by_flow)]
        return [exists().where(
            Enrollment.flow == w.funnel, Enrollment.stage == self.step_stage, Enrollment.step_id == w.step,
            Enrollment.lead_id == Lead.id, active_enrollment(),
        )]

    def reached(self) -> list[ColumnElement[bool]]:
        w = self.wanted
        if not w.funnel:
            return []
        stage = w.stage or self.first_stage
        if stage is not None:
            return [exists().where(StageEntry.funnel == w.funnel, StageEntry.stage == stage, StageEntry.lead_id == Lead.id, StageEntry.skipped.is_(False))]
        # A sequence (or a funnel no longer in the files): any enrollment in it.
        return [exists().where(Enrollment.lead_id == Lead.id, Enrollment.flow == w.funnel)]

    def all_but_search(self) -> list[ColumnElement[bool]]:
        return self.status() + self.waiting() + self.reached()

    def keyset(self, column: Any) -> list[ColumnElement[bool]]:
        """Below the last lead shown; said of both sides of a join, or PostgreSQL's merge join
        walks the leads from the top down to it."""
        return [column < self.wanted.before_id] if self.wanted.before_id is not None else []

    # The walks ------------------------------------------------------------------------

    def page_ids(self, session: Session, limit: int) -> list[int]:
        if self.term:
            found: set[int] = set()
            for walk in self.search_walks():
                found.update(session.scalars(walk.limit(limit)))
            return sorted(found, reverse=True)[:limit]
        return list(session.scalars(self.filter_walk().limit(limit)))

    def search_walks(self) -> list[Select[Any]]:
        """One query per way the text may match, each on its own index, newest first."""
        others = self.all_but_search() + self.keyset(Lead.id)
        walks = []
        lowered = self.term.lower()
        walks.append(select(Lead.id).where(Lead.email >= lowered, Lead.email < lowered + "\U0010ffff", func.substr(Lead.email, 1, len(lowered)) == lowered, *others))
        if "@" not in self.term:  # an address is looked up as one; no name or tag has an @
            walks.append(select(Lead.id).where(Lead.first_name.in_(name_spellings(self.term)), *others))
            walks.append(self.tagged(self.term).where(*others))
        return [walk.order_by(Lead.id.desc()) for walk in walks]

    def tagged(self, tag: str) -> Select[Any]:
        """The leads with this exact tag: PostgreSQL's GIN index on `tags`, SQLite's trigger-kept `lead_tags`."""
        if self.pg:
            return select(Lead.id).where(Lead.tags.op("@>")(func.cast(literal(json.dumps([tag])), JSONB)))
        return select(Lead.id).join(LEAD_TAGS, LEAD_TAGS.c.lead_id == Lead.id).where(LEAD_TAGS.c.tag == tag)

    def filter_walk(self) -> Select[Any]:
        """The leads matching the filters, walked along the most selective filter's index."""
        w = self.wanted
        if w.status and w.status != LeadStatus.ACTIVE:
            # Every status but `active` belongs to few leads: its index leads, the rest is checked per lead.
            return select(Lead.id).where(*self.all_but_search(), *self.keyset(Lead.id)).order_by(Lead.id.desc())
        if w.step and w.funnel and self.step_stage is not None:
            e = Enrollment
            return (
                select(e.lead_id).join(Lead, Lead.id == e.lead_id)
                .where(e.flow == w.funnel, e.stage == self.step_stage, e.step_id == w.step, active_enrollment(),
                       *self.keyset(e.lead_id), *self.keyset(Lead.id), *self.status(), *self.reached())
                .order_by(e.lead_id.desc())
            )
        stage = (w.stage or self.first_stage) if w.funnel else None
        if stage is not None:
            s = StageEntry
            return (
                select(s.lead_id).join(Lead, Lead.id == s.lead_id)
                .where(s.funnel == w.funnel, s.stage == stage, s.skipped.is_(False), *self.keyset(s.lead_id), *self.keyset(Lead.id), *self.status(), *self.waiting())
                .order_by(s.lead_id.desc())
            )
        return select(Lead.id).where(*self.all_but_search(), *self.keyset(Lead.id)).order_by(Lead.id.desc())


def _rows(session: Session, ids: list[int], funnel: str) -> list[LeadRow]:
    """The page's leads with where each stands per funnel: two short queries over the page's ids."""
    if not ids:
        return []
    leads = {
        row.id: row
        for row in session.execute(select(Lead.id, Lead.email, Lead.first_name, Lead.status, Lead.tags, Lead.created_at).where(Lead.id.in_(ids)))
    }
    furthest: dict[int, dict[str, tuple[int, str]]] = {}
    entered: dict[int, datetime] = {}
    for lead_id, name, stage, position, entered_at in session.execute(
        select(StageEntry.lead_id, StageEntry.funnel, StageEntry.stage, StageEntry.position, StageEntry.entered_at)
        .where(StageEntry.lead_id.in_(ids), StageEntry.skipped.is_(False))
    ):
        best = furthest.setdefault(lead_id, {}).get(name)
        if best is None or position > best[0]:
            furthest[lead_id][name] = (position, stage)
        if name == funnel and position == 0:
            entered[lead_id] = entered_at
    rows = []
    for lead_id in ids:
        row = leads.get(lead_id)
        if row is None:
            continue
        stages = tuple(LeadStage(name, stage) for name, (_, stage) in sorted(furthest.get(lead_id, {}).items()))
        rows.append(LeadRow(
            row.id, row.email, row.first_name, row.status, tuple(row.tags or ()), row.created_at, stages,
            entered.get(lead_id, row.created_at) if funnel else row.created_at,
        ))
    return rows
