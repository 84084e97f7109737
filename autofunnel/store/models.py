"""The tables, as typed SQLAlchemy models named in the seller's words.

Models hold storage only: no business rule lives on them, because the rules are
pure functions in `autofunnel.domain` and the services decide what gets written.
Every timestamp is timezone-aware UTC (`UTCDateTime`), and no timestamp has a
default: services write `clock.now()`, so a fixed or virtual clock is obeyed.

Columns that Core inserts (benchmarks, bulk imports) may leave out have a
server default; JSON columns are replaced, not mutated in place, since the ORM
does not see changes inside a dict.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    UniqueConstraint,
    column,
    false,
    table,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from autofunnel.domain.report import LEAD_SPLITS
from autofunnel.domain.statuses import DeliveryStatus, EndCause, EnrollmentStatus, LeadStatus
from autofunnel.store.types import IdType, JsonType, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Named constraints can be altered and dropped by later migrations on every backend."""

ENROLLMENT_KINDS = ("funnel", "sequence")
DELIVERY_KINDS = ("email", "notify", "confirm")


def one_of(column: str, values: Iterable[str]) -> str:
    """The SQL of a CHECK that keeps a status column inside its known words."""
    return f"{column} IN ({', '.join(repr(str(value)) for value in values)})"


ACTIVE_ENROLLMENTS = f"status = '{EnrollmentStatus.ACTIVE}'"
IN_FLIGHT_DELIVERIES = f"status IN ('{DeliveryStatus.QUEUED}', '{DeliveryStatus.SENDING}')"
SEQUENCE_RUNS = "kind = 'sequence'"
"""The partial indexes' predicates, word for word as their migrations wrote them."""

EMPTY_OBJECT = text("'{}'")
EMPTY_LIST = text("'[]'")
EMPTY_TEXT = text("''")

Id = Annotated[int, mapped_column(IdType, primary_key=True)]
Email = Annotated[str, mapped_column(String(320))]
FlowName = Annotated[str, mapped_column(String(100))]
StepId = Annotated[str, mapped_column(String(200))]
Moment = Annotated[datetime, mapped_column(UTCDateTime())]
LeadRef = Annotated[int, mapped_column(IdType, ForeignKey("leads.id"))]


class Base(DeclarativeBase):
    """One MetaData for every table, and the Python types that pick our column types."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JsonType,
        list[str]: JsonType,
    }


class Lead(Base):
    """A person, keyed by a normalized (trimmed, lower-case) email."""

    __tablename__ = "leads"
    __table_args__ = (
        CheckConstraint(one_of("status", LeadStatus), name="status"),
        # The admin's leads list (services/lead_search.py): a status, a first name, and on
        # PostgreSQL one exact tag and an email prefix's ids, each answered from an index.
        Index("ix_leads_status_id", "status", "id"),
        Index("ix_leads_first_name", "first_name", "id"),
        Index("ix_leads_tags", "tags", postgresql_using="gin", postgresql_ops={"tags": "jsonb_path_ops"}).ddl_if(dialect="postgresql"),
        Index("ix_leads_email_id", "email", "id").ddl_if(dialect="postgresql"),
    )

    id: Mapped[Id]
    email: Mapped[Email] = mapped_column(unique=True)
    first_name: Mapped[str | None] = mapped_column(String(200))
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=EMPTY_OBJECT)
    tags: Mapped[list[str]] = mapped_column(default=list, server_default=EMPTY_LIST)
    timezone: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[dict[str, Any] | None]
    owner: Mapped[str | None] = mapped_column(String(320))
    products: Mapped[str | None] = mapped_column(String)
    """Every product it ever bought, as a set (`domain.report.with_products`; none: it bought nothing):
    what a report by product groups it by, kept as it buys (`services/tallies.py` `file_purchases`)."""
    status: Mapped[str] = mapped_column(String(16))
    consent: Mapped[dict[str, Any] | None]
    created_at: Mapped[Moment]
    updated_at: Mapped[Moment]
    status_changed_at: Mapped[Moment | None]


class Event(Base):
    """Something that happened to a lead; `key` makes recording it idempotent."""

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "lead_id", "at"),
        Index(None, "type", "at"),
    )

    id: Mapped[Id]
    lead_id: Mapped[LeadRef]
    key: Mapped[str] = mapped_column(String(200), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=EMPTY_OBJECT)
    at: Mapped[Moment]
    received_at: Mapped[Moment]


class FlowVersion(Base):
    """The steps of a flow as they were when leads were scheduled with them.

    When a seller removes or renames a step, a lead parked on it resumes at the
    next step of the version it was scheduled with that still exists; `texts`
    lets the plan of an edit say which steps changed under the same id.
    """

    __tablename__ = "flow_versions"
    __table_args__ = (UniqueConstraint("flow", "digest"),)

    id: Mapped[Id]
    flow: Mapped[FlowName]
    digest: Mapped[str] = mapped_column(String(64))
    steps: Mapped[dict[str, Any]]
    texts: Mapped[dict[str, Any] | None]
    """Stage → step id → the step in words, for `validate --plan`; None on versions recorded before 0014."""
    created_at: Mapped[Moment]


class Enrollment(Base):
    """A lead's place in one funnel stage or one sequence run: the schedule itself.

    The scheduler claims rows whose `due_at` has come, through the partial index
    on active rows only, so a pass costs what is due rather than every lead.
    """

    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("lead_id", "flow", "stage", "run"),
        CheckConstraint(one_of("kind", ENROLLMENT_KINDS), name="kind"),
        CheckConstraint(one_of("status", EnrollmentStatus), name="status"),
        CheckConstraint(one_of("end_cause", EndCause), name="end_cause"),
        Index(
            "ix_enrollments_due",
            "due_at",
            postgresql_where=text(ACTIVE_ENROLLMENTS),
            sqlite_where=text(ACTIVE_ENROLLMENTS),
        ),
        # Who waits on which step now: the flow map's counts and its "leads waiting here".
        Index(
            "ix_enrollments_waiting",
            "flow", "stage", "step_id", "lead_id",
            postgresql_where=text(ACTIVE_ENROLLMENTS),
            sqlite_where=text(ACTIVE_ENROLLMENTS),
        ),
        # Sequence runs started per day (the admin home); funnel stages, most of the table, stay out.
        Index(
            "ix_enrollments_sequence_starts",
            "flow", "entered_at",
            postgresql_where=text(SEQUENCE_RUNS),
            sqlite_where=text(SEQUENCE_RUNS),
        ),
    )

    id: Mapped[Id]
    lead_id: Mapped[LeadRef]
    flow: Mapped[FlowName]
    kind: Mapped[str] = mapped_column(String(8))
    stage: Mapped[FlowName] = mapped_column(default="", server_default=EMPTY_TEXT)
    run: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    step_id: Mapped[StepId | None]
    status: Mapped[str] = mapped_column(String(10))
    due_at: Mapped[Moment | None]
    waiting_for: Mapped[dict[str, Any] | None]
    visits: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=EMPTY_OBJECT)
    history: Mapped[list[Any]] = mapped_column(JsonType, default=list, server_default=EMPTY_LIST)
    """Every step decision of this enrollment, in order: [at, step, decision, reason].
    Kept on the row the scheduler updates anyway, so a pass writes no extra timeline rows."""
    entered_at: Mapped[Moment]
    ended_at: Mapped[Moment | None]
    end_cause: Mapped[str | None] = mapped_column(String(12))
    """Why it ended, as data (`domain.statuses.EndCause`); `end_reason` says it in words."""
    end_reason: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[Moment | None]
    version_id: Mapped[int | None] = mapped_column(IdType, ForeignKey("flow_versions.id"))
    event_id: Mapped[int | None] = mapped_column(IdType, ForeignKey("events.id"))


class Delivery(Base):
    """One email to one lead from one step occurrence; its unique key is what
    makes a second dispatch of the same step harmless."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_id", "occurrence"),
        CheckConstraint(one_of("kind", DELIVERY_KINDS), name="kind"),
        CheckConstraint(one_of("status", DeliveryStatus), name="status"),
        Index(
            "ix_deliveries_in_flight",
            "status",
            "lease_until",
            postgresql_where=text(IN_FLIGHT_DELIVERIES),
            sqlite_where=text(IN_FLIGHT_DELIVERIES),
        ),
        Index(None, "lead_id", "flow", "sent_at"),
        Index(None, "finished_at"),
        Index(None, "flow", "sent_at"),
    )

    id: Mapped[Id]
    lead_id: Mapped[LeadRef]
    enrollment_id: Mapped[int | None] = mapped_column(IdType, ForeignKey("enrollments.id"))
    flow: Mapped[FlowName]
    stage: Mapped[FlowName] = mapped_column(default="", server_default=EMPTY_TEXT)
    step_id: Mapped[StepId]
    occurrence: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    kind: Mapped[str] = mapped_column(String(8))
    template: Mapped[str] = mapped_column(String(200))
    variant: Mapped[str | None] = mapped_column(String(100))
    to_address: Mapped[Email]
    status: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str | None] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    lease_until: Mapped[Moment | None]
    """While `sending`: when the claim expires (then the sweep calls it interrupted).
    While `queued`: not before this moment (a retry's back-off)."""
    dispatched_at: Mapped[Moment | None]
    """When its id was last handed to the broker; None means not handed out yet."""
    created_at: Mapped[Moment]
    sent_at: Mapped[Moment | None]
    finished_at: Mapped[Moment | None]
    opened_at: Mapped[Moment | None]
    clicked_at: Mapped[Moment | None]
    message_id: Mapped[str | None] = mapped_column(String(255))


class SendPace(Base):
    """The next free sending slot under AUTOFUNNEL_SEND_RATE, shared by every worker
    through the database when no Redis broker is configured."""

    __tablename__ = "send_pace"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    next_free_at: Mapped[Moment]


class Deadline(Base):
    """A named, personal moment for one lead (an offer's expiry)."""

    __tablename__ = "deadlines"
    __table_args__ = (UniqueConstraint("lead_id", "flow", "name"),)

    id: Mapped[Id]
    lead_id: Mapped[LeadRef]
    flow: Mapped[FlowName]
    name: Mapped[str] = mapped_column(String(100))
    due_at: Mapped[Moment]
    created_at: Mapped[Moment]


class StageEntry(Base):
    """One lead reaching (or skipping) one funnel stage; reports aggregate these rows."""

    __tablename__ = "stage_entries"
    __table_args__ = (
        UniqueConstraint("lead_id", "funnel", "stage"),
        Index(None, "funnel", "cohort_at"),
        Index(None, "funnel", "stage", "entered_at"),
        Index("ix_stage_entries_reached", "funnel", "stage", "lead_id"),
        # Time percentiles read the k-th duration of a stage straight off these, in order
        # (see store/report_queries.py): the whole funnel's, and one channel's, for a cohort
        # (`cohort_at`) or by calendar (`entered_at`).
        Index("ix_stage_entries_since_previous", "funnel", "stage", "since_previous_s", "cohort_at", "entered_at", sqlite_where=text("since_previous_s IS NOT NULL"), postgresql_where=text("since_previous_s IS NOT NULL")),
        Index("ix_stage_entries_channel_since_previous", "funnel", "channel", "stage", "since_previous_s", "cohort_at", "entered_at", sqlite_where=text("since_previous_s IS NOT NULL"), postgresql_where=text("since_previous_s IS NOT NULL")),
        Index("ix_stage_entries_since_first", "funnel", "stage", "since_first_s", "cohort_at", "entered_at", sqlite_where=text("since_first_s IS NOT NULL"), postgresql_where=text("since_first_s IS NOT NULL")),
        Index("ix_stage_entries_channel_since_first", "funnel", "channel", "stage", "since_first_s", "cohort_at", "entered_at", sqlite_where=text("since_first_s IS NOT NULL"), postgresql_where=text("since_first_s IS NOT NULL")),
        # And one owner's, segment's or region's (`LEAD_SPLITS`), as each channel's.
        *(
            Index(f"ix_stage_entries_{split}_{since}", "funnel", split, "stage", f"{since}_s", "cohort_at", "entered_at",
                  sqlite_where=text(f"{since}_s IS NOT NULL"), postgresql_where=text(f"{since}_s IS NOT NULL"))
            for split in LEAD_SPLITS for since in ("since_previous", "since_first")
        ),
    )

    id: Mapped[Id]
    lead_id: Mapped[LeadRef]
    funnel: Mapped[FlowName]
    stage: Mapped[FlowName]
    position: Mapped[int] = mapped_column(Integer)
    entered_at: Mapped[Moment]
    skipped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cohort_at: Mapped[Moment]
    channel: Mapped[str | None] = mapped_column(String(100))
    """The channel the lead came from (its first source) when it entered the funnel; the same on all its rows."""
    since_previous_s: Mapped[float | None] = mapped_column(Float)
    """Seconds from entering the stage before; none when this stage or that one was jumped over, or for the first."""
    since_first_s: Mapped[float | None] = mapped_column(Float)
    """Seconds from entering the first stage (the funnel's length when this is the last); none for the first or a skipped one."""
    # The lead's values of the lead splits now, on the rows that have a time (the ones a report's
    # percentiles read), so one owner's times are walked in order like one channel's. Set when the
    # row is written (the engine reads them with `entry_splits`) and again when the lead's values change
    # (`regroup_leads`); none on the rows without a time, and no value is none, as in the tallies.
    owner: Mapped[str | None] = mapped_column(String)
    segment: Mapped[str | None] = mapped_column(String)
    region: Mapped[str | None] = mapped_column(String)


class StageEntryProduct(Base):
    """A stage entry with a time, once per product its lead bought (`''`: none, or a purchase
    without a product): a report by product walks one product's times in order off these, as a
    report by owner walks the stage entries (a lead is in as many product groups as it bought)."""

    __tablename__ = "stage_entry_products"
    __table_args__ = (
        Index(None, "lead_id"),
        *(
            Index(f"ix_stage_entry_products_{since}", "funnel", "product", "stage", f"{since}_s", "cohort_at", "entered_at",
                  sqlite_where=text(f"{since}_s IS NOT NULL"), postgresql_where=text(f"{since}_s IS NOT NULL"))
            for since in ("since_previous", "since_first")
        ),
    )

    stage_entry_id: Mapped[int] = mapped_column(IdType, ForeignKey("stage_entries.id"), primary_key=True)
    product: Mapped[str] = mapped_column(String, primary_key=True)
    lead_id: Mapped[LeadRef]
    funnel: Mapped[FlowName]
    stage: Mapped[FlowName]
    cohort_at: Mapped[Moment]
    entered_at: Mapped[Moment]
    since_previous_s: Mapped[float | None] = mapped_column(Float)
    since_first_s: Mapped[float | None] = mapped_column(Float)


class CohortTally(Base):
    """One count or sum of the report for a funnel, day and channel: what the report adds up.

    Every fact is counted twice, once per `basis`: `cohort` on the day its lead
    entered the funnel (the cohort report), `calendar` on the day it happened
    (`mode=calendar`: a stage entry's day, an email's sending day for the email
    and what followed it, a purchase's or refund's own day). Writers only insert rows (+1 for a send, +29.00 for a purchase), in the same
    transaction as the fact they count, so two workers never wait on one hot row;
    `fold_tallies` merges them now and then. A figure is the sum of all its rows.
    `services/tallies.py` says what each figure counts.

    A writer's row carries its leads' values of the lead splits (`lead_split`); the fold
    files it twice over: under its channel (`split` empty) and, channel left empty, under
    each split and the leads' value of it (`split`, `split_value`), so a report by owner
    reads a few rows per owner as a report by channel does per channel.
    """

    __tablename__ = "cohort_tallies"
    __table_args__ = (Index("ix_cohort_tallies_funnel_split_day", "funnel", "split", "cohort_day"), Index(None, "folded", "id"))

    id: Mapped[Id]
    funnel: Mapped[FlowName]
    cohort_day: Mapped[date] = mapped_column(Date)
    """The UTC day the row counts for: its lead's cohort day, or with `basis` calendar the fact's own day."""
    channel: Mapped[str] = mapped_column(String(100), default="", server_default=EMPTY_TEXT)
    figure: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(100), default="", server_default=EMPTY_TEXT)
    step: Mapped[str] = mapped_column(String(200), default="", server_default=EMPTY_TEXT)
    detail: Mapped[str] = mapped_column(String(100), default="", server_default=EMPTY_TEXT)
    n: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    amount: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    folded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    basis: Mapped[str] = mapped_column(String(16), default="cohort", server_default=text("'cohort'"))
    lead_split: Mapped[str] = mapped_column(String, default="", server_default=EMPTY_TEXT)
    """A writer's row: the JSON object of its leads' `LEAD_SPLITS` values; empty once folded."""
    split: Mapped[str] = mapped_column(String(40), default="", server_default=EMPTY_TEXT)
    """A folded row: empty when counted by channel, else the lead split it is counted under."""
    split_value: Mapped[str] = mapped_column(String, default="", server_default=EMPTY_TEXT)


class TallyState(Base):
    """One row: whether `cohort_tallies` must be counted again before reports trust them
    (after an upgrade that added figures; `autofunnel report recount` clears it)."""

    __tablename__ = "tally_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recount_needed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    splits_needed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Whether the tallies by lead split (migration 0023) are still to be counted: until then those reports count the facts."""
    products_needed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Whether the tallies by the leads' products (migration 0025) are still to be counted: until then reports by product count the facts."""


class Assignment(Base):
    """A random pick (A/B variant, holdout) made once per lead and kept."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("lead_id", "flow", "name"), Index(None, "flow", "name"))

    id: Mapped[Id]
    lead_id: Mapped[LeadRef]
    flow: Mapped[FlowName]
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[str] = mapped_column(String(100))
    assigned_at: Mapped[Moment]


class Spend(Base):
    """Ad spend on one channel, one day, in one currency: what the report's cost figures divide.

    `autofunnel spend add` for a key already stored adds to its amount, so a seller
    can enter each invoice as it comes.
    """

    __tablename__ = "spend"
    __table_args__ = (
        UniqueConstraint("channel", "day", "currency"),
        CheckConstraint("amount >= 0", name="amount"),
    )

    id: Mapped[Id]
    channel: Mapped[str] = mapped_column(String(100))
    day: Mapped[date] = mapped_column(Date)
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[Moment]
    updated_at: Mapped[Moment]


class TimelineEntry(Base):
    """A step decision that affected a lead, with its reason, as the API and admin show it."""

    __tablename__ = "timeline"
    __table_args__ = (Index(None, "lead_id", "at"),)

    id: Mapped[Id]
    lead_id: Mapped[LeadRef]
    at: Mapped[Moment]
    flow: Mapped[FlowName | None]
    stage: Mapped[FlowName | None]
    step_id: Mapped[StepId | None]
    decision: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(500))
    detail: Mapped[dict[str, Any] | None]


class ApiKey(Base):
    """An API credential; only the sha256 of the key is kept."""

    __tablename__ = "api_keys"

    id: Mapped[Id]
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[Moment]
    last_used_at: Mapped[Moment | None]
    revoked_at: Mapped[Moment | None]


class User(Base):
    """An admin user; the password is kept only as a salted hash."""

    __tablename__ = "users"

    id: Mapped[Id]
    email: Mapped[Email] = mapped_column(unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[Moment]
    last_login_at: Mapped[Moment | None]


LEAD_TAGS = table("lead_tags", column("tag", String), column("lead_id", Integer))
"""SQLite only (migration `0019_sqlite_lead_tags`): each lead's tags, a row each, keyed by tag then
lead, written by triggers on `leads` so that no code path can leave it behind. SQLite cannot
index a JSON array's members; PostgreSQL's GIN index on `tags` needs no such table. Not a
model: nothing writes it but the triggers, and only the leads search reads it."""


def on_backend(dialect_name: str) -> Any:
    """An Alembic `include_object` hook that leaves out indexes made only on another backend
    (`Index(...).ddl_if(dialect=…)`), which autogenerate would otherwise ask to create, and
    SQLite's trigger-kept `lead_tags`, which it would otherwise ask to drop."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table" and reflected and name == LEAD_TAGS.name:
            return False
        condition = getattr(obj, "_ddl_if", None) if type_ == "index" and not reflected else None
        return condition is None or condition.dialect is None or condition.dialect == dialect_name

    return include
