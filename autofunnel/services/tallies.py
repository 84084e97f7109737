"""The report's running tallies: every count and sum of a report, kept per funnel, day and channel.

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

Each figure is kept on two bases (`basis`): `cohort`, on the day the fact's lead
entered the funnel, and `calendar`, on the day the fact happened: a stage entry's
day, an email's sending day (for the email and what followed it), a purchase's or
a refund's own day. Distinct counts add up over cohort days (each lead has one) but
not over calendar days: `customers`, `refunded_orders` and the holdout groups are
kept on the cohort basis; by calendar, paying customers and refunded orders are
kept as event days and their consecutive pairs (below).

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
  like a negative purchase); `refunded_orders` per currency: distinct orders refunded;
  `unmatched_refunds` per currency: those refunds whose order has no purchase stored (a purchase
  of the order stored later takes them back), so a report looks for them only when there are some.
- Calendar only, per currency: `customer_days`, each day a funnel's lead bought on;
  `customer_repeats`, each pair of consecutive such days of one lead, on the later
  day with `step` the earlier (a report holding both subtracts it: the lead counts once);
  `refunded_order_days` and `refunded_order_repeats`, the same for an order's refunds.

- Attribution, for the default window, per kind of touch (`channel`: the sources a lead was seen
  with; `email`: the funnel's emails a person clicked within 7 days before the purchase):
  `attributed_channel` / `attributed_email` with `stage` a touch's place among its purchase's
  touches ("rank/count"), `step` its label, `detail` the currency and `amount` the net revenue of
  the purchases it touched at that place (any rank-based model weighs these); `decayed_channel` /
  `decayed_email`, `amount` the time-decay shares. A purchase is counted with its touches when
  it is written; a refund takes its amount off the purchase's shares; a touch recorded after a
  purchase it came before (a click gathered late, a backdated subscription) takes the purchase's
  shares back as they were counted and counts them again with it.

A refund belongs to the purchase of the same lead with the same `order_id` (see
`store/facts.py`'s `refund_of`); a refund, its purchase and an email before the purchase are counted
for `refunds_7d` by whichever of the three is written last.

Writers only ever insert rows, never update one, so concurrent transactions
never queue on a hot row; `fold_tallies` merges them in the background.

Each writer's row also carries its leads' owner, segment and region (`lead_split`,
`domain.report.LEAD_SPLITS`) and set of products bought (`products`): as many rows as before,
the batch's leads grouped by those values too. The fold files each under its channel and,
channel left out, under each split and value its reports read (`kept_under`), so a report by
owner adds rows up as one by channel does. A lead whose values change has its whole count moved
(`regroup_leads`); one whose products bought grow, its figures counted by lead (`regroup_buyers`).
The revenue figures are kept a second time per product of the purchase (`PRODUCT_FIGURES`).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, Final

from sqlalchemy import CTE, ColumnElement, Exists, Insert, Select, String, and_, bindparam, cast, column, delete, exists, func, insert, literal, or_, select, text, true, union_all, update, values
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased

from autofunnel.store.facts import amount_of, lead_value, refund_of, split_pairs, split_value_in
from autofunnel.domain.report import LEAD_SPLITS, PRODUCTS, TALLY_SPLITS, lead_split_values, with_products
from autofunnel.store.models import CohortTally, Event, Lead, StageEntry, StageEntryProduct, TallyState
from autofunnel.store.queries import Executor, among, among_param, bulk_update, chunks, is_postgres
from autofunnel.store.tally_statements import (
    CALENDAR, COHORT, KEY_COLUMNS, TALLY_COLUMNS, email_parts, engagement_parts, event_parts, followed_parts, purchase_after, purchases_after, refunded_before,
    kept_under, stage_entry_parts, touch_moves, unmatched_refund_parts, unsubscribe_from,
)
from autofunnel.store.types import UTCDateTime


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
    return Scope("ids", lambda entity: among_param(entity.id, "scope_ids", pg=False), {"scope_ids": sorted(set(ids))})


def of_lead(lead_id: int) -> Scope:
    """The rows about one lead."""
    return Scope("lead", lambda entity: entity.lead_id == bindparam("scope_lead"), {"scope_lead": lead_id})


def of_leads(lead_ids: Sequence[int]) -> Scope:
    """The rows about these leads."""
    return Scope("leads", lambda entity: among_param(entity.lead_id, "scope_leads", pg=False), {"scope_leads": sorted(set(lead_ids))})


_STATEMENTS: dict[tuple[Any, ...], Any] = {}


# The figures ------------------------------------------------------------------------------


def _write(
    session: Session, key: tuple[Any, ...], build: Callable[[], list[Select[Any]]], scope: Scope, params: dict[str, Any] | None = None,
    *, sign: int = 1, filed: str | None = None,
) -> None:
    """One statement for all the parts, built once per kind and backend: one round trip per tally.
    `params`: the scope's and more. `sign` -1 takes what the parts count back. Over `everything` (a recount) the rows are written
    folded, filed under each lead split in SQL: a writer's rows carry their leads' split values, and a
    million leads' make millions of rows, too many to fold in Python. `filed`: the rows are written
    filed under that one split only (the channel's and the other splits' figures are left as they are)."""
    key = (*key, sign, filed, session.get_bind().dialect.name)
    statement = _STATEMENTS.get(key)
    if statement is None:
        counted: Any = union_all(*build())
        if sign < 0:
            rows = counted.subquery("taken_back")
            counted = select(*(rows.c[name] for name in KEY_COLUMNS), (-rows.c.n).label("n"), (-rows.c.amount).label("amount"))
        if filed is not None:
            rows = counted.subquery("filed")
            one_split = select(
                *(rows.c[name] if name != "channel" else literal("") for name in KEY_COLUMNS if name != "lead_split"),
                literal(filed), split_value_in(is_postgres(session), rows.c.lead_split, filed), rows.c.n, rows.c.amount,
            )
            statement = insert(CohortTally.__table__).from_select([*FOLDED_KEY, "n", "amount"], one_split, include_defaults=False)
        elif scope is everything:
            statement = _folded_insert(session, counted.cte("counted"))
        else:
            statement = insert(CohortTally.__table__).from_select(list(TALLY_COLUMNS), counted, include_defaults=False)
        _STATEMENTS[key] = statement
    session.execute(statement, scope.params if params is None else params)


def _folded_insert(session: Session, counted: CTE) -> Insert:
    """The tally rows `counted`, written folded: by channel, and channel left out, by each lead split."""
    pg = is_postgres(session)
    figure = [counted.c[name] for name in ("figure", "stage", "step", "detail", "basis")]
    blank = literal("")
    filed = [(counted.c.channel, blank, blank, true())] + [
        (blank, literal(split), split_value_in(pg, counted.c.lead_split, split), kept_under(split, counted.c.figure))
        for split in TALLY_SPLITS
    ]
    rows = union_all(*(
        select(counted.c.funnel, counted.c.cohort_day, channel, *figure, split, value, func.sum(counted.c.n), func.sum(counted.c.amount), true())
        .where(kept).group_by(text("1, 2, 3, 4, 5, 6, 7, 8, 9, 10"))
        for channel, split, value, kept in filed
    ))
    return insert(CohortTally.__table__).from_select([*FOLDED_KEY, "n", "amount", "folded"], rows, include_defaults=False)


def count_stage_entries(session: Session, scope: Scope, *, sign: int = 1) -> None:
    """Stage entries in `scope`: reached, skipped, timed, lasted, and reach by holdout group."""
    _write(session, ("stage_entries", scope.name), lambda: stage_entry_parts(session, scope), scope, sign=sign)


def count_emails(session: Session, scope: Scope, *, sign: int = 1) -> None:
    """Sent emails in `scope`: sent, first opens, first clicks (what followed them is `count_events`'s)."""
    _write(session, ("emails", scope.name), lambda: email_parts(session, scope), scope, sign=sign)


@dataclass(frozen=True)
class Cohort:
    """A lead's first-stage row in a funnel, as far as its tallies need it."""

    cohort_at: datetime
    channel: str | None
    entered_at: datetime
    lead_split: str
    """Its lead's values of the lead splits (`store.facts.lead_splits`), read with it."""
    followed: bool = True
    """Whether something recorded already may follow the email (see `may_follow`); when not, nothing is looked up."""


def may_follow(lead_id: Any, now: Any) -> Exists:
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
    counts: list[tuple[str, int, float]] = [(figure, 1, 0.0) for figure in figures]
    if cohort.followed:
        e = Event
        email = SimpleNamespace(id=literal(delivery_id), lead_id=literal(lead_id), sent_at=literal(sent_at, UTCDateTime()))
        r = aliased(Event, name="r")
        followed = union_all(
            select(e.type.label("kind"), func.count().label("n"), func.sum(amount_of(session, e)).label("amount"))
            .where(e.lead_id == lead_id, or_(purchase_after(session, e, email), unsubscribe_from(e, email))).group_by(e.type),
            select(literal("refund").label("kind"), func.count(), func.sum(amount_of(session, r)))
            .select_from(e).join(r, refund_of(r, e)).where(e.lead_id == lead_id, purchase_after(session, e, email)),
        )
        names = {"purchase": "purchases_7d", "unsubscribed": "unsubscribed", "refund": "refunds_7d"}
        counts += [(names[kind], int(n), float(amount or 0.0) if kind != "unsubscribed" else 0.0) for kind, n, amount in session.execute(followed) if n]
    session.execute(_tally_rows_statement(), [
        {**where, "figure": figure, "detail": "", "n": n, "amount": amount}
        for where in _sent_email_tally_keys(funnel, cohort, sent_at, stage, step) for figure, n, amount in counts
    ])


@functools.cache
def _tally_rows_statement() -> Insert:
    """Built once: every sent email's record runs it."""
    return insert(CohortTally.__table__)


def _sent_email_tally_keys(funnel: str, cohort: Cohort, sent_at: datetime, stage: str, step: str) -> list[dict[str, Any]]:
    """Where a sent email counts: its funnel, its lead's channel, its stage and step, on its lead's
    cohort day and on the day it was sent (the two bases)."""
    where = {"funnel": funnel, "channel": cohort.channel or "", "stage": stage, "step": step, "lead_split": cohort.lead_split}
    return [
        {**where, "basis": COHORT, "cohort_day": cohort.cohort_at.astimezone(UTC).date()},
        {**where, "basis": CALENDAR, "cohort_day": sent_at.astimezone(UTC).date()},
    ]


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
    days = union_all(
        select(literal(COHORT, t.c.basis.type).label("basis"), bindparam("tally_cohort_day", type_=t.c.cohort_day.type).label("day")),
        select(literal(CALENDAR, t.c.basis.type), bindparam("tally_sent_day", type_=t.c.cohort_day.type)),
    ).subquery("days")
    shown = or_(
        figures.c.figure == "sent",
        and_(figures.c.figure == "opened", finished.c.opened_at.is_not(None)),
        and_(figures.c.figure == "clicked", finished.c.clicked_at.is_not(None)),
    )
    row = select(
        bindparam("tally_funnel", type_=t.c.funnel.type), days.c.day,
        bindparam("tally_channel", type_=t.c.channel.type), figures.c.figure, bindparam("tally_stage", type_=t.c.stage.type),
        bindparam("tally_step", type_=t.c.step.type), literal("", t.c.detail.type), days.c.basis, bindparam("tally_lead_split", type_=t.c.lead_split.type),
        literal(1, t.c.n.type), literal(0.0, t.c.amount.type),
    ).select_from(finished).join(figures, shown).join(days, true())
    return insert(t).from_select(list(TALLY_COLUMNS), row)


def sent_email_tally_params(funnel: str, cohort: Cohort, sent_at: datetime, stage: str, step: str) -> dict[str, Any]:
    cohort_key, calendar_key = _sent_email_tally_keys(funnel, cohort, sent_at, stage, step)
    return {
        "tally_funnel": funnel, "tally_channel": cohort_key["channel"], "tally_stage": stage, "tally_step": step,
        "tally_cohort_day": cohort_key["cohort_day"], "tally_sent_day": calendar_key["cohort_day"], "tally_lead_split": cohort.lead_split,
    }


def count_engagement(session: Session, figure: str, scope: Scope) -> None:
    """People's first opens or first clicks (`figure`) of the sent emails in `scope`: a batch of
    gathered opens is counted in one statement, grouped as `count_emails` groups them. A first
    click is also a touch: a purchase it came before, already counted, has its shares counted again
    (rarely: a click is nearly always recorded before the purchase it leads to, so a short lookup
    comes first, and the recount only when it finds one)."""
    _write(session, ("engagement", figure, scope.name), lambda: engagement_parts(session, figure, scope), scope)
    if figure == "clicked" and _found(session, ("touched purchases", "email"), lambda: purchases_after(session, "email", scope), scope):
        _write(session, ("clicks", scope.name), lambda: touch_moves(session, "email", scope), scope)


def _found(session: Session, key: tuple[Any, ...], rows: Callable[[], Select[Any]], scope: Scope) -> bool:
    """Whether `rows` (built once per kind and backend) finds any: the short lookup before a recount
    that is rarely needed (a big statement PostgreSQL plans afresh each time, ~10 ms)."""
    key = (*key, scope.name, session.get_bind().dialect.name)
    check = _STATEMENTS.get(key)
    if check is None:
        check = _STATEMENTS[key] = select(rows().exists())
    return bool(session.scalar(check, scope.params))


def count_sources(session: Session, scope: Scope, entering: str) -> None:
    """New subscriptions in `scope` of leads already known: a source is a touch of the lead's
    purchases after it, in the funnels it had entered before `entering` (whose purchases the
    entry counts itself)."""
    if _found(session, ("touched purchases", "channel"), lambda: purchases_after(session, "channel", scope), scope):
        _write(session, ("sources", scope.name), lambda: touch_moves(session, "channel", scope, bindparam("scope_funnel")), scope, {**scope.params, "scope_funnel": entering})


def count_events(session: Session, scope: Scope, *, funnel: str | None = None, batch: frozenset[str] | None = None, sign: int = 1) -> None:
    """Events in `scope`: purchases (revenue, orders, customers, and the emails they followed),
    refunds (refunded, refunded orders, refunds of unknown orders, and the emails their purchases
    followed) and unsubscribes from emails.

    A purchase counts for every funnel its lead had entered by then (or only for
    `funnel`). A lead becomes a customer with its first counted purchase in a
    currency: one of the scope's purchases, when none of its purchases outside the
    scope already counted. `batch`: the scope is a batch of new events of these types (else a
    lead's or every event, each purchase counted whole, net). A batch with refunds has their
    purchases, counted before, take their attribution shares down; a batch's purchases take back
    the refunds of their orders stored before them (rarely: a short lookup comes first). `sign` -1
    takes a lead's or every event's count back.
    """
    params = {**scope.params, **({"scope_funnel": funnel} if funnel is not None else {})}
    new_refunds = batch is not None and "refund" in batch
    with_refunds = batch is None or new_refunds
    _write(
        session, ("events", scope.name, funnel is None, new_refunds, with_refunds),
        lambda: event_parts(session, scope, funnel is not None, new_refunds, with_refunds), scope, params, sign=sign,
    )
    if batch is not None and "purchase" in batch and funnel is None and _found(session, ("refunds before purchases",), lambda: refunded_before(scope), scope):
        _write(session, ("refunds now bought", scope.name), lambda: unmatched_refund_parts(session, scope, None, taken_back=True), scope)


# Upkeep -----------------------------------------------------------------------------------


def regroup_leads(session: Session, new_values: Mapping[int, tuple[Any, ...]], write: Callable[[], None]) -> None:
    """Write changes of leads whose owner or fields may change (`write`, with `new_values`, each lead's
    `lead_split_values` after it). A lead whose values of the lead splits change has its tallies
    moved with it: taken back under the old values before the change, counted again under the new
    ones after it, so a report by owner files every lead under its owner of now, as the facts do.
    Its channel's figures are taken back and counted again alike, and add up as before."""
    moved = []
    for part in chunks(sorted(new_values), 1000):
        for lead_id, owner, fields in session.execute(select(Lead.id, Lead.owner, Lead.fields).where(Lead.id.in_(list(part)))):
            if lead_split_values(owner, fields) != new_values[lead_id]:
                moved.append(lead_id)
    for part in chunks(moved, 1000):
        _count_all(session, of_leads(part), -1)
    write()
    if moved:
        session.flush()
    for part in chunks(moved, 1000):
        _count_all(session, of_leads(part), 1)
        file_entry_splits(session, part)


def regroup_buyers(session: Session, bought: Mapping[int, set[str | None]]) -> None:
    """Leads about to have purchases of `bought` (per lead, the products; `None`: a purchase without
    one) recorded: a lead whose set of products bought grows has its tallies moved to the new set
    (`leads.products`), as `regroup_leads` moves a lead whose owner changes, and its timed stage
    entries filed under each product (`file_entry_products`). Run before the purchases are stored,
    so the move counts what was counted before them, and they count under the new set."""
    changed: dict[int, str] = {}
    moved: list[int] = []
    # Only a funnel's lead has anything tallied (a shopper of a cart sequence alone has not): the others'
    # new set is written and nothing moves (ingestion of carts and their purchases: -20 % events/s otherwise).
    entered = exists().where(StageEntry.lead_id == Lead.id, StageEntry.position == 0)
    for part in chunks(sorted(bought), 1000):
        for lead_id, products, in_funnel in session.execute(select(Lead.id, Lead.products, entered).where(among(session, Lead.id, part))):
            if (grown := with_products(products, bought[lead_id])) is not None:
                changed[lead_id] = grown
                if in_funnel:
                    moved.append(lead_id)
    for part in chunks(moved, 1000):
        _move_products(session, of_leads(part), -1)
    bulk_update(session, Lead.__table__, [{"id": lead_id, "products": products} for lead_id, products in changed.items()])
    for part in chunks(moved, 1000):
        _move_products(session, of_leads(part), 1)
        session.execute(delete(StageEntryProduct).where(among(session, StageEntryProduct.lead_id, part)).execution_options(synchronize_session=False))
        file_entry_products(session, StageEntry.lead_id, part)


def _move_products(session: Session, scope: Scope, sign: int) -> None:
    """The figures a report by product counts by lead (its stage entries, its emails and what followed
    them; not revenue, which is kept per product of the purchase, nor attribution) in `scope`, under the `products` split
    only, taken back (`sign` -1) or counted: moving a lead's whole count, as `regroup_leads` does, would
    add and take back every other split's and channel's figures as well, and its attribution."""
    _write(
        session, ("products moved", scope.name),
        lambda: [*stage_entry_parts(session, scope), *email_parts(session, scope), *followed_parts(session, scope, None)], scope, sign=sign, filed=PRODUCTS,
    )


def file_entry_products(session: Session, by: Any = None, ids: Sequence[int] = ()) -> None:
    """The stage entries with a time whose `by` (their id, or their lead's) is in `ids` (`by` none:
    every one) written into `stage_entry_products`, once per product their lead bought."""
    products = func.coalesce(Lead.products, "[null]")
    if is_postgres(session):
        bought = func.jsonb_array_elements_text(cast(products, JSONB)).table_valued("value").alias("bought")
    else:
        bought = func.json_each(products).table_valued("value").alias("bought")
    e = StageEntry
    timed = or_(e.since_previous_s.is_not(None), e.since_first_s.is_not(None))
    rows = (
        select(e.id, func.coalesce(cast(bought.c.value, String), ""), e.lead_id, e.funnel, e.stage, e.cohort_at, e.entered_at, e.since_previous_s, e.since_first_s)
        .select_from(e).join(Lead, Lead.id == e.lead_id).join(bought, true()).where(timed)
    )
    columns = ["stage_entry_id", "product", "lead_id", "funnel", "stage", "cohort_at", "entered_at", "since_previous_s", "since_first_s"]
    if by is None:
        session.execute(insert(StageEntryProduct).from_select(columns, rows))
        return
    for part in chunks(sorted(set(ids)), 1000):
        session.execute(insert(StageEntryProduct).from_select(columns, rows.where(among(session, by, part))))


def entry_splits(session: Session, lead_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The leads' values of the lead splits as their stage entries that have a time carry them (see
    `StageEntry.owner`), for the engine to write with the entries: a report by owner walks one owner's
    times in order on them, and counts as many as its tallies say."""
    columns = [value.label(split) for split, value in _entry_values().items()]
    found: dict[int, dict[str, Any]] = {}
    for part in chunks(sorted(set(lead_ids)), 1000):
        for row in session.execute(select(Lead.id, *columns).where(among(session, Lead.id, part))):
            found[row.id] = {split: row._mapping[split] for split in LEAD_SPLITS}
    return found


def file_entry_splits(session: Session, lead_ids: Sequence[int]) -> None:
    """`entry_splits` written again onto the leads' timed stage entries, after their values changed."""
    timed = or_(StageEntry.since_previous_s.is_not(None), StageEntry.since_first_s.is_not(None))
    for part in chunks(list(lead_ids), 1000):
        session.execute(
            update(StageEntry).where(Lead.id == StageEntry.lead_id, among(session, StageEntry.lead_id, part), timed).values(_entry_values())
            .execution_options(synchronize_session=False)
        )


def _entry_values() -> dict[str, ColumnElement[Any]]:
    """Each lead split's value of a lead (`Lead`), as the tallies group it: no value and empty text are none."""
    return {split: func.nullif(lead_value(Lead, split), "") for split in LEAD_SPLITS}


def _count_all(session: Session, scope: Scope, sign: int = 1) -> None:
    """Every figure the tallies count about the facts in `scope` (`sign` -1: taken back)."""
    count_stage_entries(session, scope, sign=sign)
    count_emails(session, scope, sign=sign)
    count_events(session, scope, sign=sign)


def rebuild_tallies(session: Session) -> None:
    """Count every figure again from the stored facts, replacing the running tallies.

    For the report benchmark's generated history and for the tests, which hold the
    running tallies to it; the upgrade runs the same statements. With writers
    running, PostgreSQL needs a REPEATABLE READ transaction for it, so a fact
    written meanwhile is counted once: by the recount if it is in the snapshot,
    else by its own tally row, which the snapshot does not see to delete.
    """
    session.execute(delete(CohortTally))
    _count_all(session, everything)
    fold_tallies(session)


def tallies_current(session: Session) -> bool:
    """Whether the tallies count every figure of this version (see migration 0015): if not, the
    report counts the stored facts until `recount_tallies` has run."""
    return not session.scalar(select(TallyState.recount_needed).where(TallyState.id == 1))


def splits_current(session: Session) -> frozenset[str]:
    """The splits current tallies (`tallies_current`) are kept by: the lead splits unless migration 0023
    left them to `recount_tallies`, the products bought unless 0025 did."""
    state = session.execute(select(TallyState.splits_needed, TallyState.products_needed).where(TallyState.id == 1)).first()
    splits_needed, products_needed = state if state is not None else (False, False)
    return frozenset((*(() if splits_needed else LEAD_SPLITS), *(() if products_needed else (PRODUCTS,))))


def recount_tallies(session: Session, progress: Callable[[str], None] = lambda _: None) -> None:
    """`rebuild_tallies`, telling `progress` each part as it starts, then marked current."""
    session.execute(delete(CohortTally))
    for name, count in (("stage entries", count_stage_entries), ("emails", count_emails), ("purchases, refunds and unsubscribes", count_events)):
        progress(name)
        count(session, everything)
    progress("folding")
    fold_tallies(session)
    session.execute(delete(TallyState))
    session.execute(insert(TallyState), [{"id": 1, "recount_needed": False, "splits_needed": False, "products_needed": False}])


FOLDED_KEY: Final = (*(name for name in KEY_COLUMNS if name != "lead_split"), "split", "split_value")
"""A folded row's key: a writer's row has its leads' split values instead of the last two."""


def fold_tallies(session: Session, *, limit: int = 100_000) -> int:
    """Merge tally rows that add to the same figure into one; returns how many writers' rows it took.

    The rows written since the last fold are taken out, together with the folded
    rows of the same funnel days, and written back as one row per figure. A
    concurrent fold or writer is safe: rows are only deleted and re-added in one
    transaction, and a figure is the sum of whatever rows it has. A writer's row
    adds to its channel's figure and, channel left out, to each split's its reports read (`kept_under`).
    """
    t = CohortTally
    newest = session.scalar(select(t.id).where(t.folded.is_(False)).order_by(t.id).offset(limit - 1).limit(1))
    fresh_where = [t.folded.is_(False)] + ([t.id <= newest] if newest is not None else [])
    columns = [t.__table__.c[name] for name in (*FOLDED_KEY, "lead_split", "n", "amount")]
    taken = session.execute(delete(t).where(*fresh_where).returning(*columns)).all()
    fresh = len(taken)
    if not taken:
        return 0
    days: dict[str, set[Any]] = defaultdict(set)
    for row in taken:
        days[row.funnel].add(row.cohort_day)
    for funnel, of_funnel in sorted(days.items()):
        for part in chunks(sorted(of_funnel), 200):
            # Every split named, so the (funnel, split, day) index finds them.
            taken += session.execute(
                delete(t).where(t.folded.is_(True), t.funnel == funnel, t.split.in_(("", *TALLY_SPLITS)), t.cohort_day.in_(list(part))).returning(*columns)
            ).all()
    merged: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0.0])
    for row in taken:
        keys = [tuple(row[: len(FOLDED_KEY)])]
        if row.lead_split:
            funnel, day, channel, *figure, _, _ = keys[0]
            keys = [(funnel, day, channel, *figure, "", "")] + [
                (funnel, day, "", *figure, *pair) for pair in split_pairs(row.lead_split) if kept_under(pair[0], row.figure)
            ]
        for key in keys:
            figures = merged[key]
            figures[0] += int(row.n)
            figures[1] += float(row.amount)
    # A figure that adds up to nothing goes (a share taken back and counted again leaves float dust).
    rows = [dict(zip(FOLDED_KEY, key, strict=True), n=n, amount=amount, folded=True) for key, (n, amount) in merged.items() if n or abs(amount) > 1e-9]
    for part in chunks(rows, 5000):
        session.execute(insert(t), list(part))
    return fresh

