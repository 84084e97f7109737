"""SQLite only: `lead_tags (tag, lead_id)`, each lead's tags one row each, kept by triggers.

SQLite cannot index the members of a JSON array, so the admin's search for a tag (and every
search text without an `@`, which is also tried as a tag) read every lead's `tags`: 118–350 ms
at a million leads. This table holds the same tags as rows, keyed by tag then lead, so the
search walks one key range, newest lead first. Triggers on `leads` write it in the same
statement that writes the tags, whichever code path does (subscribe, import, the API, erase,
a hand-run UPDATE), so it cannot fall behind. PostgreSQL needs none of it: its GIN index on
`tags` answers `@>` directly.

Revision ID: 0019_sqlite_lead_tags
Revises: 0018_sequence_starts_index
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0019_sqlite_lead_tags"
down_revision: str | Sequence[str] | None = "0018_sequence_starts_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TAGS_OF_NEW = "SELECT NEW.id, value FROM json_each(NEW.tags) WHERE type = 'text'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("CREATE TABLE lead_tags (tag VARCHAR NOT NULL, lead_id INTEGER NOT NULL, PRIMARY KEY (tag, lead_id)) WITHOUT ROWID")
    op.execute(f"""CREATE TRIGGER lead_tags_on_insert AFTER INSERT ON leads WHEN NEW.tags IS NOT NULL
        BEGIN INSERT OR IGNORE INTO lead_tags (lead_id, tag) {TAGS_OF_NEW}; END""")
    op.execute(f"""CREATE TRIGGER lead_tags_on_update AFTER UPDATE OF tags ON leads WHEN OLD.tags IS NOT NEW.tags
        BEGIN
            DELETE FROM lead_tags WHERE tag IN (SELECT value FROM json_each(OLD.tags) WHERE type = 'text') AND lead_id = OLD.id;
            INSERT OR IGNORE INTO lead_tags (lead_id, tag) {TAGS_OF_NEW};
        END""")
    op.execute("""CREATE TRIGGER lead_tags_on_delete AFTER DELETE ON leads WHEN OLD.tags IS NOT NULL
        BEGIN DELETE FROM lead_tags WHERE tag IN (SELECT value FROM json_each(OLD.tags) WHERE type = 'text') AND lead_id = OLD.id; END""")
    op.execute("INSERT OR IGNORE INTO lead_tags (lead_id, tag) SELECT leads.id, json_each.value FROM leads, json_each(leads.tags) WHERE json_each.type = 'text'")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for trigger in ("lead_tags_on_insert", "lead_tags_on_update", "lead_tags_on_delete"):
        op.execute(f"DROP TRIGGER {trigger}")
    op.execute("DROP TABLE lead_tags")
