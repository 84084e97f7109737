"""A search for a tag finds exactly the leads holding it, however their tags were written.

On SQLite the search reads `lead_tags`, which triggers on `leads` keep (migration
0019); on PostgreSQL the GIN index on `tags`. Tags are written here through every
path a lead's tags take — a subscription, a second subscription adding tags, an
import, an erasure, a hand-run UPDATE and DELETE — and
on SQLite the side table must then hold each lead's tags, no more and no fewer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from autofunnel.clock import FixedClock
from autofunnel.domain.statuses import LeadStatus
from autofunnel.services.importing import import_leads
from autofunnel.services.inputs import parse_subscribe
from autofunnel.services.lead_search import LeadFilter, find_leads
from autofunnel.services.leads import erase_lead, subscribe
from autofunnel.store.models import Lead
from autofunnel.store.queries import is_postgres

pytestmark = pytest.mark.db

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def _subscribe(rt: Any, email: str, tags: list[str]) -> None:
    subscribe(rt, parse_subscribe({"email": email, "funnel": "yoga", "tags": tags}, NOW), consent={"source": "test"})


def _found(rt: Any, tag: str) -> list[str]:
    return [row.email for row in find_leads(rt, LeadFilter(search=tag)).rows]


def test_every_way_of_writing_tags_keeps_the_tag_search_exact(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> None:
    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", FixedClock(NOW))
    _subscribe(rt, "ann@example.com", ["vip", "yoga-fan"])
    _subscribe(rt, "bob@example.com", ["vip"])
    _subscribe(rt, "ann@example.com", ["early-bird"])  # a second subscription adds tags
    listing = tmp_path / "list.csv"
    listing.write_text("email,tags\ncat@example.com,vip;imported\nfay@example.com,imported\n", encoding="utf-8")
    import_leads(rt, listing, "yoga")
    _subscribe(rt, "dan@example.com", ["vip"])
    erase_lead(rt, "dan@example.com")
    with rt.db.transaction() as session:
        session.execute(text("UPDATE leads SET tags = :tags WHERE email = :email"), {"tags": json.dumps(["vip", "edited"]), "email": "cat@example.com"})
        gone = session.execute(insert(Lead).returning(Lead.id), [{
            "email": "eve@example.com", "status": LeadStatus.ACTIVE, "tags": ["vip"], "created_at": NOW, "updated_at": NOW,
        }]).scalar_one()
    assert _found(rt, "vip") == ["eve@example.com", "cat@example.com", "bob@example.com", "ann@example.com"]
    with rt.db.transaction() as session:
        session.execute(text("DELETE FROM leads WHERE id = :id"), {"id": gone})
    assert _found(rt, "vip") == ["cat@example.com", "bob@example.com", "ann@example.com"], "newest first, the erased lead's tags gone"
    assert _found(rt, "imported") == ["fay@example.com"], "the hand-run UPDATE replaced cat's tags"
    assert _found(rt, "edited") == ["cat@example.com"]
    assert _found(rt, "yoga-fan") == _found(rt, "early-bird") == ["ann@example.com"]
    assert _found(rt, "yoga") == [], "a tag matches whole"
    with rt.db.read() as session:
        if is_postgres(session):
            return
        held = {(row.lead_id, row.tag) for row in session.execute(text("SELECT lead_id, tag FROM lead_tags"))}
        stored = {(lead_id, tag) for lead_id, tags in session.execute(select(Lead.id, Lead.tags)) for tag in tags or []}
    assert held == stored and len(held) == 7
