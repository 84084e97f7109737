"""The report's running tallies: every count and sum of a cohort report, kept per funnel, cohort day and channel.

A cohort report over a million leads cannot count five million events in a
second, so the figures are counted as the facts are written, in the same
transaction, into `cohort_tallies`, and the report adds up a few thousand of
those rows (SPEC.md "Reports"; DESIGN.md's "aggregate as you write").

Each figure is one `INSERT … SELECT` over the rows a transaction just wrote
(its *scope*), so the rule for a figure is written once and serves three
callers: the engine adding what it just did, a funnel's first stage entry
catching up on purchases recorded before it, and `rebuild_tallies`, which runs
the same statements over everything and is how the tests prove the running
tallies equal a recount.

What the figures count (`figure`, with `stage`, `step`, `detail`):

- `reached`, `skipped` per stage: stage-entry rows, jumped-over ones in `skipped` too.
- `timed` per stage: rows with a time from the stage before (`since_previous_s`);
  `lasted` per stage: rows with a time from the first stage (`since_first_s`).
  The percentiles' ranks are computed from these counts.
- `holdout` per stage and holdout group (`detail`): stage entries of held-out and treated leads.
- `sent`, `opened`, `clicked`, `unsubscribed`, `purchases_7d` per stage and step:
  emails of the funnel sent to its leads, first human opens and clicks of them,
  unsubscribes made from them, purchases within 7 days after them.
  `purchases_7d` also carries the purchases' gross `amount`, and `refunds_7d`
  (`n` refunds, `amount`) the refunds of those purchases: `revenue_7d` is the difference.
- `revenue` per currency (`detail`): `n` orders, `amount` their total, by the
  funnel's leads after they entered it; `customers` per currency: leads with at
  least one such purchase.
- `refunded` per currency: `n` refund events, `amount` their total, by the
  funnel's leads after they entered it (the order need not be known: a refund counts
  like a negative purchase); `refunded_orders` per currency: distinct orders refunded.

A refund belongs to the purchase of the same lead with the same `order_id` (see
`refund_of`); a refund, its purchase and an email before the purchase are counted
for `refunds_7d` by whichever of the three is written last.

Writers only ever insert rows, never update one, so concurrent transactions
never queue on a hot row; `fold_tallies` merges them in the background.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    CTE,
    ColumnElement,
    Float,
    Select,
    String,
    and_,
    bindparam,
    case,
    cast,
    column,
    delete,
    Exists,
    exists,
    func,
    or_,
    insert,
    Insert,
    literal,
    literal_column,
    select,
    text,
    true,
    tuple_,
    union_all,
    values,
)
from sqlalchemy.orm import Session, aliased

from autofunnel.store.models import Assignment, CohortTally, Delivery, Event, StageEntry, TallyState
from autofunnel.store.queries import Executor, chunks, is_postgres
from autofunnel.store.types import UTCDateTime

PURCHASE_WINDOW: Final = timedelta(days=7)
"""A step's `purchases_7d` counts purchases within this long after its email was sent."""
TALLY_COLUMNS: Final = ("funnel", "cohort_day", "channel", "figure", "stage", "step", "detail", "n", "amount")
KEY_COLUMNS: Final = TALLY_COLUMNS[:7]

BY_KEY: Final = text("1, 2, 3, 4, 5, 6, 7")
"""Every tally statement groups by its key columns by position: the same expression in the
select list and in GROUP BY, bound parameters and all, on both backends."""



@dataclass(frozen=True)
class Scope:
    """Which rows of an entity (or of an alias of it) a tally statement counts.

    The condition is written with bound parameters (`params`), so each statement
    is built and compiled once per process, and PostgreSQL prepares it: a tally
    costs an email's transaction one short round trip, not a fresh plan.
    """

    name: str
    condition: Callable[[Any], ColumnElement[bool]]
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, entity: Any) -> ColumnElement[bool]:
        return self.condition(entity)


everything: Final = Scope("everything", lambda _: true())


def ids_in(ids: Sequence[int]) -> Scope:
    """The rows with these ids."""
    return Scope("ids", lambda entity: entity.id.in_(bindparam("scope_ids", expanding=True)), {"scope_ids": sorted(set(ids))})


def of_lead(lead_id: int) -> Scope:
    """The rows about one lead."""
    return Scope("lead", lambda entity: entity.lead_id == bindparam("scope_lead"), {"scope_lead": lead_id})


_STATEMENTS: dict[tuple[Any, ...], Any] = {}


# Dialect-specific pieces, shared with the report ------------------------------------------


def day_of(session: Session, moment: Any) -> Any:
    """The UTC calendar day of a stored moment."""
    if is_postgres(session):
        # A literal zone, not a bound one: PostgreSQL must see the same expression in GROUP BY.
        return cast(func.timezone(literal_column("'UTC'"), moment), CohortTally.cohort_day.type)
    return func.date(moment, type_=String)


def amount_of(session: Session, event: Any) -> ColumnElement[float]:
    """A purchase's `amount` as a number; an amount that is not a number counts as nothing."""
    if is_postgres(session):
        return case((func.jsonb_typeof(event.properties["amount"]) == "number", event.properties["amount"].as_float()), else_=0.0)
    return func.coalesce(cast(func.json_extract(event.properties, "$.amount"), Float), 0.0)


def currency_of(event: Any) -> ColumnElement[str]:
    return func.coalesce(event.properties["currency"].as_string(), "")


def order_of(event: Any) -> ColumnElement[Any]:
    """A purchase's or refund's `order_id`, as stored (text or number)."""
    return event.properties["order_id"].as_string()


def refund_of(refund: Any, purchase: Any) -> ColumnElement[bool]:
    """`refund` (an event of type refund) gives money back for `purchase`: the same lead and order."""
    return and_(refund.lead_id == purchase.lead_id, refund.type == "refund", order_of(refund) == order_of(purchase))


def order_key(refund: Any) -> ColumnElement[str]:
    """Which order a refund is about, to count refunded orders: its lead and `order_id`; a refund
    without one is an order of its own."""
    order = func.coalesce(cast(order_of(refund), String), literal("#") + cast(refund.id, String))
    return cast(refund.lead_id, String) + literal(":") + order


def before(session: Executor, later: Any, earlier: Any, span: timedelta) -> ColumnElement[bool]:
    """`later < earlier + span`, written so each backend compares it directly."""
    seconds = int(span.total_seconds())
    if is_postgres(session):
        return later < earlier + literal_column(f"interval '{seconds} seconds'")
    return func.julianday(later) < func.julianday(earlier) + seconds / 86400.0


# The figures ------------------------------------------------------------------------------


def _rows(session: Session, funnel: Any, moment: Any, channel: Any, figure: Any, stage: Any, step: Any, detail: Any, n: Any, amount: Any = None) -> list[Any]:
    """The select list of one tally row, in `TALLY_COLUMNS` order."""
    return [
        funnel.label("funnel"), day_of(session, moment).label("cohort_day"), func.coalesce(channel, "").label("channel"),
        (literal(figure) if isinstance(figure, str) else figure).label("figure"), stage.label("stage"), step.label("step"), detail.label("detail"),
        n.label("n"), (amount if amount is not None else literal_column("0.0")).label("amount"),
    ]


def _write(session: Session, key: tuple[Any, ...], build: Callable[[], list[Select[Any]]], params: dict[str, Any]) -> None:
    """One statement for all the parts, built once per kind and backend: one round trip per tally."""
    key = (*key, session.get_bind().dialect.name)
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS[key] = insert(CohortTally.__table__).from_select(list(TALLY_COLUMNS), union_all(*build()), include_defaults=False)
    session.execute(statement, params)


def count_stage_entries(session: Session, scope: Scope) -> None:
    """Stage entries in `scope`: reached, skipped, timed, lasted, and reach by holdout group."""
    _write(session, ("stage_entries", scope.name), lambda: _stage_entry_parts(session, scope), scope.params)


def _stage_entry_parts(session: Session, scope: Scope) -> list[Select[Any]]:
    e = StageEntry
    blank = literal("")

    def part(figure: str, n: Any, *where: Any) -> Select[Any]:
        return (
            select(*_rows(session, e.funnel, e.cohort_at, e.channel, figure, e.stage, blank, blank, n))
            .where(scope(e), *where).group_by(BY_KEY)
        )

    a = Assignment
    holdout = (
        select(*_rows(session, e.funnel, e.cohort_at, e.channel, "holdout", e.stage, blank, a.value, func.count()))
        .join(a, and_(a.lead_id == e.lead_id, a.flow == e.funnel, a.name == "holdout"))
        .where(scope(e)).group_by(BY_KEY)
    )
    return [
        part("reached", func.count()),
        part("skipped", func.count(), e.skipped.is_(True)),
        part("timed", func.count(), e.since_previous_s.is_not(None)),
        part("lasted", func.count(), e.since_first_s.is_not(None)),
        holdout,
    ]


def _first_stage(d: Any) -> tuple[Any, ColumnElement[bool]]:
    """The first-stage row (cohort and channel) of an email's lead in the email's funnel, and the
    join condition; an email counts for the funnel once the lead had entered it, as in the report."""
    s0 = aliased(StageEntry, name="s0")
    return s0, and_(s0.lead_id == d.lead_id, s0.funnel == d.flow, s0.position == 0, d.sent_at >= s0.entered_at)


def count_emails(session: Session, scope: Scope) -> None:
    """Sent emails in `scope`: sent, first opens, first clicks (what followed them is `count_events`'s)."""
    _write(session, ("emails", scope.name), lambda: _email_parts(session, scope), scope.params)


def _email_parts(session: Session, scope: Scope) -> list[Select[Any]]:
    d = Delivery
    s0, on_s0 = _first_stage(d)
    sent = (d.kind == "email", d.status == "sent", scope(d))

    def part(figure: str, n: Any) -> Select[Any]:
        return (
            select(*_rows(session, d.flow, s0.cohort_at, s0.channel, figure, d.stage, d.step_id, literal(""), n))
            .select_from(d).join(s0, on_s0).where(*sent).group_by(BY_KEY)
        )

    return [
        part("sent", func.count()),
        part("opened", func.count(d.opened_at)).having(func.count(d.opened_at) > 0),
        part("clicked", func.count(d.clicked_at)).having(func.count(d.clicked_at) > 0),
    ]


@dataclass(frozen=True)
class Cohort:
    """A lead's first-stage row in a funnel, as far as its tallies need it."""

    cohort_at: datetime
    channel: str | None
    entered_at: datetime
    followed: bool = True
    """Whether something recorded already may follow the email (see `may_follow`); when not, nothing is looked up."""


def may_follow(lead_id: int, now: datetime) -> Exists:
    """Whether a lead has an unsubscribe, or a purchase dated from `now` on, already recorded: the
    only events that can follow an email before it is recorded sent. Asked in the claim's query
    (no extra round trip), so the send's record looks them up only in that rare case."""
    e = Event
    return exists().where(e.lead_id == lead_id, or_(e.type == "unsubscribed", and_(e.type == "purchase", e.at >= now)))


def count_sent_email(session: Executor, delivery_id: int, lead_id: int, sent_at: datetime, funnel: str, cohort: Cohort, stage: str, step: str, figures: Sequence[str]) -> None:
    """An email just recorded sent (`figures`: sent, and opened or clicked if that came first).

    Built from what the sender already knows, plus one short lookup of what was
    recorded before the send yet follows it (an unsubscribe while it was being
    handed over, a purchase dated after it): rows, not an INSERT … SELECT to plan,
    on the path of every email. `count_emails` is the same rule in SQL, for recounts.
    """
    e = Event
    email = SimpleNamespace(id=literal(delivery_id), lead_id=literal(lead_id), sent_at=literal(sent_at, UTCDateTime()))
    counts: list[tuple[str, int, float]] = [(figure, 1, 0.0) for figure in figures]
    if cohort.followed:
        r = aliased(Event, name="r")
        followed = union_all(
            select(e.type.label("kind"), func.count().label("n"), func.sum(amount_of(session, e)).label("amount"))
            .where(e.lead_id == lead_id, or_(_purchase_after(session, e, email), _unsubscribe_from(e, email))).group_by(e.type),
            select(literal("refund").label("kind"), func.count(), func.sum(amount_of(session, r)))
            .select_from(e).join(r, refund_of(r, e)).where(e.lead_id == lead_id, _purchase_after(session, e, email)),
        )
        names = {"purchase": "purchases_7d", "unsubscribed": "unsubscribed", "refund": "refunds_7d"}
        counts += [(names[kind], int(n), float(amount or 0.0) if kind != "unsubscribed" else 0.0) for kind, n, amount in session.execute(followed) if n]
    where = _sent_email_tally_key(funnel, cohort, stage, step)
    session.execute(insert(CohortTally.__table__), [{**where, "figure": figure, "detail": "", "n": n, "amount": amount} for figure, n, amount in counts])


def _sent_email_tally_key(funnel: str, cohort: Cohort, stage: str, step: str) -> dict[str, Any]:
    """Where a sent email counts: its funnel, its lead's cohort day and channel, its stage and step."""
    return {"funnel": funnel, "cohort_day": cohort.cohort_at.astimezone(UTC).date(), "channel": cohort.channel or "", "stage": stage, "step": step}


def sent_email_tally(finished: CTE) -> Insert:
    """`count_sent_email` for a statement that records the send itself, when nothing may
    follow the email (`Cohort.followed` false): `finished` is that record's UPDATE, returning
    `opened_at` and `clicked_at`, and adds a row only if it changed the delivery.

    PostgreSQL folds an email's record, its timeline entry, this tally and the next
    email's claim into one statement (see `services/delivery.py`); the parameters are
    the ones `sent_email_tally_params` gives. The property tests hold it, like
    `count_sent_email`, to `count_emails`.
    """
    t = CohortTally.__table__
    figures = values(column("figure", String), name="figures").data([("sent",), ("opened",), ("clicked",)])
    shown = or_(
        figures.c.figure == "sent",
        and_(figures.c.figure == "opened", finished.c.opened_at.is_not(None)),
        and_(figures.c.figure == "clicked", finished.c.clicked_at.is_not(None)),
    )
    row = select(
        bindparam("tally_funnel", type_=t.c.funnel.type), bindparam("tally_cohort_day", type_=t.c.cohort_day.type),
        bindparam("tally_channel", type_=t.c.channel.type), figures.c.figure, bindparam("tally_stage", type_=t.c.stage.type),
        bindparam("tally_step", type_=t.c.step.type), literal("", t.c.detail.type), literal(1, t.c.n.type), literal(0.0, t.c.amount.type),
    ).select_from(finished).join(figures, shown)
    return insert(t).from_select(["funnel", "cohort_day", "channel", "figure", "stage", "step", "detail", "n", "amount"], row)


def sent_email_tally_params(funnel: str, cohort: Cohort, stage: str, step: str) -> dict[str, Any]:
    return {f"tally_{name}": value for name, value in _sent_email_tally_key(funnel, cohort, stage, step).items()}


def count_engagement(session: Session, figure: str, scope: Scope) -> None:
    """People's first opens or first clicks (`figure`) of the sent emails in `scope`: a batch of
    gathered opens is counted in one statement, grouped as `count_emails` groups them."""
    d = Delivery
    s0, on_s0 = _first_stage(d)
    _write(session, ("engagement", figure, scope.name), lambda: [
        select(*_rows(session, d.flow, s0.cohort_at, s0.channel, figure, d.stage, d.step_id, literal(""), func.count()))
        .select_from(d).join(s0, on_s0).where(d.kind == "email", d.status == "sent", scope(d)).group_by(BY_KEY)
    ], scope.params)


def _unsubscribe_from(u: Any, d: Any) -> ColumnElement[bool]:
    return and_(u.lead_id == d.lead_id, u.type == "unsubscribed", u.properties["delivery"].as_integer() == d.id)


def _purchase_after(session: Executor, p: Any, d: Any) -> ColumnElement[bool]:
    return and_(p.lead_id == d.lead_id, p.type == "purchase", p.at >= d.sent_at, before(session, p.at, d.sent_at, PURCHASE_WINDOW))


def count_events(session: Session, scope: Scope, *, funnel: str | None = None) -> None:
    """Events in `scope`: purchases (revenue, orders, customers, and the emails they followed),
    refunds (refunded, refunded orders, and the emails their purchases followed) and unsubscribes from emails.

    A purchase counts for every funnel its lead had entered by then (or only for
    `funnel`). A lead becomes a customer with its first counted purchase in a
    currency: one of the scope's purchases, when none of its purchases outside the
    scope already counted.
    """
    params = {**scope.params, **({"scope_funnel": funnel} if funnel is not None else {})}
    _write(session, ("events", scope.name, funnel is None), lambda: _event_parts(session, scope, funnel is not None), params)


def _event_parts(session: Session, scope: Scope, one_funnel: bool) -> list[Select[Any]]:
    funnel = bindparam("scope_funnel") if one_funnel else None
    p = aliased(Event, name="p")
    s0, on_s0 = _purchasers_stage(funnel)
    bought = (p.type == "purchase", scope(p), p.at >= s0.entered_at)
    earlier = aliased(Event, name="earlier")
    counted_before = exists().where(
        earlier.lead_id == p.lead_id, earlier.type == "purchase", currency_of(earlier) == currency_of(p),
        earlier.at >= s0.entered_at, ~scope(earlier),
    )
    blank = literal("")
    revenue = (
        select(*_rows(session, s0.funnel, s0.cohort_at, s0.channel, "revenue", blank, blank, currency_of(p), func.count(), func.sum(amount_of(session, p))))
        .select_from(p).join(s0, on_s0(p)).where(*bought).group_by(BY_KEY)
    )
    customers = (
        select(*_rows(session, s0.funnel, s0.cohort_at, s0.channel, "customers", blank, blank, currency_of(p), func.count(p.lead_id.distinct())))
        .select_from(p).join(s0, on_s0(p)).where(*bought, ~counted_before).group_by(BY_KEY)
    )
    r = aliased(Event, name="r")
    s2, on_s2 = _purchasers_stage(funnel)
    refunded = (r.type == "refund", scope(r), r.at >= s2.entered_at)
    earlier_refund = aliased(Event, name="earlier_refund")
    order_counted_before = exists().where(
        earlier_refund.lead_id == r.lead_id, earlier_refund.type == "refund", order_of(earlier_refund) == order_of(r),
        currency_of(earlier_refund) == currency_of(r), earlier_refund.at >= s2.entered_at, ~scope(earlier_refund),
    )
    refunds = (
        select(*_rows(session, s2.funnel, s2.cohort_at, s2.channel, "refunded", blank, blank, currency_of(r), func.count(), func.sum(amount_of(session, r))))
        .select_from(r).join(s2, on_s2(r)).where(*refunded).group_by(BY_KEY)
    )
    refunded_orders = (
        select(*_rows(session, s2.funnel, s2.cohort_at, s2.channel, "refunded_orders", blank, blank, currency_of(r), func.count(order_key(r).distinct())))
        .select_from(r).join(s2, on_s2(r)).where(*refunded, ~order_counted_before).group_by(BY_KEY)
    )
    d = Delivery
    s1, on_s1 = _first_stage(d)
    u = aliased(Event, name="u")
    followed = []
    for figure, event, on in (("unsubscribed", u, _unsubscribe_from(u, d)), ("purchases_7d", p, _purchase_after(session, p, d))):
        amount = func.sum(amount_of(session, p)) if figure == "purchases_7d" else None
        stmt = (
            select(*_rows(session, d.flow, s1.cohort_at, s1.channel, figure, d.stage, d.step_id, blank, func.count(), amount))
            .select_from(event).join(d, on).join(s1, on_s1)
            .where(scope(event), d.kind == "email", d.status == "sent")
            .group_by(BY_KEY)
        )
        if funnel is not None:
            stmt = stmt.where(d.flow == funnel)
        followed.append(stmt)
    # A refund of a purchase that followed an email: counted with the refund when the purchase is
    # already stored, else with the purchase (the refunds stored before it, outside the scope).
    for counted, outside in ((r, None), (p, r)):
        stmt = (
            select(*_rows(session, d.flow, s1.cohort_at, s1.channel, "refunds_7d", d.stage, d.step_id, blank, func.count(), func.sum(amount_of(session, r))))
            .select_from(r).join(p, refund_of(r, p)).join(d, _purchase_after(session, p, d)).join(s1, on_s1)
            .where(scope(counted), d.kind == "email", d.status == "sent", *([~scope(outside)] if outside is not None else []))
            .group_by(BY_KEY)
        )
        if funnel is not None:
            stmt = stmt.where(d.flow == funnel)
        followed.append(stmt)
    return [revenue, customers, refunds, refunded_orders, *followed]


def _purchasers_stage(funnel: Any) -> tuple[Any, Callable[[Any], ColumnElement[bool]]]:
    s0 = aliased(StageEntry, name="s0")

    def on(p: Any) -> ColumnElement[bool]:
        condition = and_(s0.lead_id == p.lead_id, s0.position == 0)
        return condition if funnel is None else and_(condition, s0.funnel == funnel)

    return s0, on


# Upkeep -----------------------------------------------------------------------------------


def rebuild_tallies(session: Session) -> None:
    """Count every figure again from the stored facts, replacing the running tallies.

    For the report benchmark's generated history and for the tests, which hold the
    running tallies to it; the upgrade runs the same statements. With writers
    running, PostgreSQL needs a REPEATABLE READ transaction for it, so a fact
    written meanwhile is counted once: by the recount if it is in the snapshot,
    else by its own tally row, which the snapshot does not see to delete.
    """
    session.execute(delete(CohortTally))
    count_stage_entries(session, everything)
    count_emails(session, everything)
    count_events(session, everything)
    fold_tallies(session)


def tallies_current(session: Session) -> bool:
    """Whether the tallies count every figure of this version (see migration 0015): if not, the
    report counts the stored facts until `recount_tallies` has run."""
    return not session.scalar(select(TallyState.recount_needed).where(TallyState.id == 1))


def recount_tallies(session: Session, progress: Callable[[str], None] = lambda _: None) -> None:
    """`rebuild_tallies`, telling `progress` each part as it starts, then marked current."""
    session.execute(delete(CohortTally))
    for name, count in (("stage entries", count_stage_entries), ("emails", count_emails), ("purchases, refunds and unsubscribes", count_events)):
        progress(name)
        count(session, everything)
    progress("folding")
    fold_tallies(session)
    session.execute(delete(TallyState))
    session.execute(insert(TallyState), [{"id": 1, "recount_needed": False}])


def fold_tallies(session: Session, *, limit: int = 100_000) -> int:
    """Merge tally rows that add to the same figure into one; returns how many rows went.

    The rows written since the last fold are taken out, together with the folded
    rows of the same funnel days, and written back as one row per figure. A
    concurrent fold or writer is safe: rows are only deleted and re-added in one
    transaction, and a figure is the sum of whatever rows it has.
    """
    t = CohortTally
    newest = session.scalar(select(t.id).where(t.folded.is_(False)).order_by(t.id).offset(limit - 1).limit(1))
    fresh_where = [t.folded.is_(False)] + ([t.id <= newest] if newest is not None else [])
    columns = [t.__table__.c[name] for name in TALLY_COLUMNS]
    taken = session.execute(delete(t).where(*fresh_where).returning(*columns)).all()
    if not taken:
        return 0
    days = sorted({(row.funnel, row.cohort_day) for row in taken})
    for part in chunks(days, 200):
        taken += session.execute(
            delete(t).where(t.folded.is_(True), tuple_(t.funnel, t.cohort_day).in_(list(part))).returning(*columns)
        ).all()
    merged: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0.0])
    for row in taken:
        figures = merged[tuple(row[:7])]
        figures[0] += int(row.n)
        figures[1] += float(row.amount)
    rows = [dict(zip(KEY_COLUMNS, key, strict=True), n=n, amount=amount, folded=True) for key, (n, amount) in merged.items() if n or amount]
    for part in chunks(rows, 5000):
        session.execute(insert(t), list(part))
    return len(taken) - len(rows)

