"""The running tallies' statements: each figure of `cohort_tallies` as one SELECT over a scope.

`services/tallies.py` says what each figure counts and when they are written;
here each is built, as `INSERT … SELECT` parts over whichever rows a `scope`
condition picks (an entity or alias in, a condition out), so the engine's
running count, the catch-up of a first stage entry and the recount share one rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, String, and_, bindparam, case, cast, exists, func, join, literal, literal_column, or_, select, text, true, union_all
from sqlalchemy.orm import Session, aliased

from autofunnel.domain.statuses import DeliveryStatus
from autofunnel.domain.report import ATTRIBUTION_WINDOW, BUCKET_DETAILS, PRODUCTS, PURCHASE_WINDOW, TIME_BUCKETS, TIME_DECAY_HALF_LIFE_S
from autofunnel.store.facts import amount_of, before, currency_of, day_of, lead_splits, order_key, order_of, product_key, refund_of, seconds_between, splits_of
from autofunnel.store.models import Assignment, Delivery, Event, Lead, StageEntry
from autofunnel.store.queries import Executor, OuterFirst, Unindexed, is_postgres

Condition = Callable[[Any], ColumnElement[bool]]
"""Which rows of an entity (or of an alias of it) a statement counts."""


KEY_COLUMNS: Final = ("funnel", "cohort_day", "channel", "figure", "stage", "step", "detail", "basis", "lead_split")
TALLY_COLUMNS: Final = (*KEY_COLUMNS, "n", "amount")
COHORT: Final = "cohort"
CALENDAR: Final = "calendar"
"""The two days a fact counts on (`cohort_tallies.basis`): its lead's cohort day, and its own."""

BY_KEY: Final = text("1, 2, 3, 4, 5, 6, 7, 8, 9")
"""Every tally statement groups by its key columns by position: the same expression in the
select list and in GROUP BY, bound parameters and all, on both backends."""


def tally_row(
    session: Session, basis: Any, funnel: Any, moment: Any, channel: Any, figure: Any, stage: Any, step: Any, detail: Any, n: Any, amount: Any = None,
    *, lead: Any = None, splits: Any = None,
) -> list[Any]:
    """The select list of one tally row, in `TALLY_COLUMNS` order; `moment` gives its day on `basis`,
    `lead` (a lead id, looked up) or `splits` (already read) its lead splits."""
    return [
        funnel.label("funnel"), day_of(session, moment).label("cohort_day"), func.coalesce(channel, "").label("channel"),
        (literal(figure) if isinstance(figure, str) else figure).label("figure"), stage.label("stage"), step.label("step"), detail.label("detail"),
        (literal(basis) if isinstance(basis, str) else basis).label("basis"), (splits if splits is not None else lead_splits(is_postgres(session), lead)).label("lead_split"),
        n.label("n"), (amount if amount is not None else literal_column("0.0")).label("amount"),
    ]


def _tried(names: tuple[str, ...], name: str) -> Any:
    """A few constant rows each source row is tried against, so one pass over the
    scope counts several figures or both bases (joined as `OuterFirst`: the scope stays the
    outer loop on SQLite)."""
    return union_all(*(select(literal(value, String).label(name)) for value in names)).subquery(f"{name}_tried")


BASES: Final = (COHORT, CALENDAR)


def time_bucket(seconds: Any) -> Any:
    """The `TIME_BUCKETS` bucket a time falls in, as its lower bound ('0' for the first)."""
    return case(*((seconds < bound, detail) for detail, bound in zip(BUCKET_DETAILS, TIME_BUCKETS[1:])), else_=BUCKET_DETAILS[-1])


def stage_entry_parts(session: Session, scope: Condition) -> list[Select[Any]]:
    """Reached, skipped, timed and lasted on both bases in one pass over the scope's stage
    entries (eight passes made an import's tally cost twice what it did on one basis), and
    reach by holdout group. A time is counted in its bucket (`time_bucket`, in `detail`)."""
    e = StageEntry
    blank = literal("")
    counted, bases = _tried(("reached", "skipped", "timed", "lasted"), "figure"), _tried(BASES, "basis")
    counts = or_(
        counted.c.figure == "reached", and_(counted.c.figure == "skipped", e.skipped.is_(True)),
        and_(counted.c.figure == "timed", e.since_previous_s.is_not(None)), and_(counted.c.figure == "lasted", e.since_first_s.is_not(None)),
    )
    moment = case((bases.c.basis == COHORT, e.cohort_at), else_=e.entered_at)
    bucket = case(
        (counted.c.figure == "timed", time_bucket(e.since_previous_s)), (counted.c.figure == "lasted", time_bucket(e.since_first_s)), else_=blank,
    )
    lead = aliased(Lead, name="entry_lead")
    entries = (
        select(*tally_row(session, bases.c.basis, e.funnel, moment, e.channel, counted.c.figure, e.stage, blank, bucket, func.count(), splits=splits_of(is_postgres(session), lead)))
        .select_from(OuterFirst(OuterFirst(OuterFirst(e, lead, lead.id == e.lead_id), counted, counts), bases, true())).where(scope(e)).group_by(BY_KEY)
    )
    a = Assignment
    # The lead's holdout group looked up entry by entry (by the unique key), not joined: for an
    # import's chunk of 5000 entries PostgreSQL chose to hash every lead's assignment instead,
    # 235 ms a chunk at 1M leads and growing with the list (a fifth of the import's time). Only the
    # lead can find it (`Unindexed` flow and name): in a fresh database, before its first ANALYZE,
    # PostgreSQL took the funnel's assignments by (flow, name) and read all of them for each entry
    # (an import of 30,000 leads into a new database: 524 rows/s, each chunk slower than the last).
    group = select(a.value).where(
        a.lead_id == e.lead_id, Unindexed(a.flow, postgres=True) == e.funnel, Unindexed(a.name, postgres=True) == "holdout",
    ).scalar_subquery()
    holdout = (
        select(*tally_row(session, COHORT, e.funnel, e.cohort_at, e.channel, HOLDOUT, e.stage, blank, group, func.count(), lead=e.lead_id))
        .where(scope(e)).group_by(BY_KEY).having(group.is_not(None))
    )
    return [entries, holdout]


def email_day(basis: Any, s0: Any, d: Any) -> Any:
    """The moment an email and what followed it count on: its lead's cohort, or its own sending."""
    if isinstance(basis, str):
        return s0.cohort_at if basis == COHORT else d.sent_at
    return case((basis == COHORT, s0.cohort_at), else_=d.sent_at)


def email_first_stage(d: Any) -> tuple[Any, ColumnElement[bool]]:
    """The first-stage row (cohort and channel) of an email's lead in the email's funnel, and the
    join condition; an email counts for the funnel once the lead had entered it, as in the report."""
    s0 = aliased(StageEntry, name="s0")
    return s0, and_(s0.lead_id == d.lead_id, s0.funnel == d.flow, s0.position == 0, d.sent_at >= s0.entered_at)


def email_parts(session: Session, scope: Condition) -> list[Select[Any]]:
    """Sent, first opens and first clicks on both bases, in one pass over the scope's emails."""
    d = Delivery
    s0, on_s0 = email_first_stage(d)
    counted, bases = _tried(("sent", "opened", "clicked"), "figure"), _tried(BASES, "basis")
    counts = or_(
        counted.c.figure == "sent", and_(counted.c.figure == "opened", d.opened_at.is_not(None)),
        and_(counted.c.figure == "clicked", d.clicked_at.is_not(None)),
    )
    lead = aliased(Lead, name="email_lead")
    splits = splits_of(is_postgres(session), lead)
    return [
        select(*tally_row(session, bases.c.basis, d.flow, email_day(bases.c.basis, s0, d), s0.channel, counted.c.figure, d.stage, d.step_id, literal(""), func.count(), splits=splits))
        .select_from(OuterFirst(OuterFirst(d.__table__.join(s0, on_s0).join(lead, lead.id == d.lead_id), counted, counts), bases, true()))
        .where(d.kind == "email", d.status == DeliveryStatus.SENT, scope(d)).group_by(BY_KEY)
    ]


def engagement_parts(session: Session, figure: str, scope: Condition) -> list[Select[Any]]:
    """People's first opens or first clicks (`figure`) of the sent emails in `scope`, grouped as `email_parts` groups them."""
    d = Delivery
    s0, on_s0 = email_first_stage(d)
    return [
        select(*tally_row(session, basis, d.flow, email_day(basis, s0, d), s0.channel, figure, d.stage, d.step_id, literal(""), func.count(), lead=d.lead_id))
        .select_from(d).join(s0, on_s0).where(d.kind == "email", d.status == DeliveryStatus.SENT, scope(d)).group_by(BY_KEY)
        for basis in BASES
    ]


def unsubscribe_from(u: Any, d: Any, typed: Callable[[Any], Any] = lambda column: column) -> ColumnElement[bool]:
    """`u` is an unsubscribe from email `d`; `typed` wraps `u.type` (`Unindexed` when `u` is a batch's ids)."""
    return and_(u.lead_id == d.lead_id, typed(u.type) == "unsubscribed", u.properties["delivery"].as_integer() == d.id)


def purchase_after(session: Executor, p: Any, d: Any, typed: Callable[[Any], Any] = lambda column: column) -> ColumnElement[bool]:
    """`p` is a purchase within 7 days after email `d` was sent; `typed` as `unsubscribe_from`'s."""
    return and_(p.lead_id == d.lead_id, typed(p.type) == "purchase", p.at >= d.sent_at, before(session, p.at, d.sent_at, PURCHASE_WINDOW))


def event_parts(session: Session, scope: Condition, one_funnel: bool, new_refunds: bool, with_refunds: bool = True) -> list[Select[Any]]:
    """`with_refunds`: the scope may hold refunds (a batch without any leaves out the refunds of unknown orders)."""
    funnel = bindparam("scope_funnel") if one_funnel else None
    p = aliased(Event, name="p")
    s0, on_s0 = _purchasers_stage(funnel)
    bought = (Unindexed(p.type) == "purchase", scope(p), p.at >= s0.entered_at)
    earlier = aliased(Event, name="earlier")
    counted_before = exists().where(
        earlier.lead_id == p.lead_id, earlier.type == "purchase", currency_of(earlier) == currency_of(p),
        earlier.at >= s0.entered_at, ~scope(earlier),
    )
    # Customers and refunded orders are distinct leads and orders, which add up over cohort days
    # (a lead has one) but not over calendar days: see `calendar_distinct_parts`.
    revenue = _with_products(session, "revenue", p, s0, on_s0, bought, func.count(), func.sum(amount_of(session, p)))
    customers = _with_products(session, "customers", p, s0, on_s0, bought, func.count(p.lead_id.distinct()), first=(counted_before, earlier))
    r = aliased(Event, name="r")
    s2, on_s2 = _purchasers_stage(funnel)
    refunded = (Unindexed(r.type) == "refund", scope(r), r.at >= s2.entered_at)
    earlier_refund = aliased(Event, name="earlier_refund")
    order_counted_before = exists().where(
        earlier_refund.lead_id == r.lead_id, earlier_refund.type == "refund", order_of(earlier_refund) == order_of(r),
        currency_of(earlier_refund) == currency_of(r), earlier_refund.at >= s2.entered_at, ~scope(earlier_refund),
    )
    refunds = _with_products(session, "refunded", r, s2, on_s2, refunded, func.count(), func.sum(amount_of(session, r)))
    refunded_orders = _with_products(
        session, "refunded_orders", r, s2, on_s2, refunded, func.count(order_key(r).distinct()), first=(order_counted_before, earlier_refund),
    )
    followed = followed_parts(session, scope, funnel)
    calendar_distinct = [part for kind in CALENDAR_DISTINCT for part in calendar_distinct_parts(session, scope, funnel, kind)]
    attributed = attribution_parts(session, funnel, scope, net_of(session))
    if new_refunds:
        # A refund of a purchase counted before: its amount taken off the purchase's shares.
        r2, p2 = aliased(Event, name="moved_r"), aliased(Event, name="moved_p")
        refunded_now = select(p2.id).select_from(r2).join(p2, refund_of(r2, p2, Unindexed)).where(scope(r2), Unindexed(p2.type) == "purchase")
        attributed += attribution_parts(
            session, funnel, lambda p: and_(~scope(p), p.id.in_(refunded_now)), lambda p: -given_back(session, p, scope), counted=False,
        )
    return [revenue, customers, refunds, refunded_orders, *(unmatched_refund_parts(session, scope, funnel) if with_refunds else []), *calendar_distinct, *followed, *attributed]


def _with_products(
    session: Session, figure: str, e: Any, s: Any, on_s: Callable[[Any], ColumnElement[bool]], where: tuple[Any, ...], n: Any, amount: Any = None,
    *, first: tuple[Any, Any] | None = None,
) -> Select[Any]:
    """A revenue figure of the events `e` (their funnels' first stages `s`), twice in one pass (a batch's
    statement has a fixed cost per part): for the whole report, and per product of the event as
    `product_<figure>` (the product in `step`) for a report by product, whose groups hold a purchase by
    its own product. On both bases; with `first` (an `exists` of an earlier event counted already, and
    that event), only on the cohort basis, each event that is the first counted (of its product)."""
    figures = _tried((figure, f"product_{figure}"), "figure")
    per_product = figures.c.figure == f"product_{figure}"
    step = case((per_product, product_key(e)), else_=literal(""))
    if first is None:
        bases = _tried(BASES, "basis")
        moment = case((bases.c.basis == COHORT, s.cohort_at), else_=e.at)
        return (
            select(*tally_row(session, bases.c.basis, s.funnel, moment, s.channel, figures.c.figure, literal(""), step, currency_of(e), n, amount, lead=e.lead_id))
            .select_from(OuterFirst(OuterFirst(join(e, s, on_s(e)), figures, true()), bases, true())).where(*where).group_by(BY_KEY)
        )
    counted_before, earlier = first
    return (
        select(*tally_row(session, COHORT, s.funnel, s.cohort_at, s.channel, figures.c.figure, literal(""), step, currency_of(e), n, lead=e.lead_id))
        .select_from(OuterFirst(join(e, s, on_s(e)), figures, true()))
        .where(*where, ~counted_before.where(or_(~per_product, product_key(earlier) == product_key(e)))).group_by(BY_KEY)
    )


def followed_parts(session: Session, scope: Condition, funnel: Any) -> list[Select[Any]]:
    """What followed the funnel's emails, among the scope's events: unsubscribes from them, purchases
    within 7 days after them and the refunds of those, on both bases (`funnel`: a bound funnel, or none for every one)."""
    p, r = aliased(Event, name="p"), aliased(Event, name="r")
    blank = literal("")
    d = Delivery
    s1, on_s1 = email_first_stage(d)
    u = aliased(Event, name="u")
    followed = []
    for basis, figure, event, on in (
        (basis, figure, event, on) for basis in BASES
        for figure, event, on in (("unsubscribed", u, unsubscribe_from(u, d, Unindexed)), ("purchases_7d", p, purchase_after(session, p, d, Unindexed)))
    ):
        amount = func.sum(amount_of(session, p)) if figure == "purchases_7d" else None
        stmt = (
            select(*tally_row(session, basis, d.flow, email_day(basis, s1, d), s1.channel, figure, d.stage, d.step_id, blank, func.count(), amount, lead=d.lead_id))
            .select_from(event).join(d, on).join(s1, on_s1)
            .where(scope(event), d.kind == "email", d.status == DeliveryStatus.SENT)
            .group_by(BY_KEY)
        )
        if funnel is not None:
            stmt = stmt.where(d.flow == funnel)
        followed.append(stmt)
    # A refund of a purchase that followed an email: counted with the refund when the purchase is
    # already stored, else with the purchase (the refunds stored before it, outside the scope).
    for basis, counted, outside in ((basis, counted, outside) for basis in BASES for counted, outside in ((r, None), (p, r))):
        stmt = (
            select(*tally_row(session, basis, d.flow, email_day(basis, s1, d), s1.channel, "refunds_7d", d.stage, d.step_id, blank, func.count(), func.sum(amount_of(session, r)), lead=d.lead_id))
            .select_from(r).join(p, refund_of(r, p, Unindexed)).join(d, purchase_after(session, p, d, Unindexed)).join(s1, on_s1)
            .where(scope(counted), d.kind == "email", d.status == DeliveryStatus.SENT, *([~scope(outside)] if outside is not None else []))
            .group_by(BY_KEY)
        )
        if funnel is not None:
            stmt = stmt.where(d.flow == funnel)
        followed.append(stmt)
    return followed


UNMATCHED: Final = "unmatched_refunds"
HOLDOUT: Final = "holdout"
"""Leads of the funnel's holdout group (`detail`) that reached a stage, on their cohort day only."""


def unmatched_refund_parts(session: Session, scope: Condition, funnel: Any, *, taken_back: bool = False) -> list[Select[Any]]:
    """Refunds of orders never recorded (`unmatched_refunds`, `refunded`'s count and sum of those):
    a report whose tallies hold none skips looking for them. A refund in the scope counts when no
    purchase of its order is stored; `taken_back`: the refunds stored before the scope's purchases
    of their order, counted so then, are taken back (each once, however many purchases of the
    order the scope holds)."""
    r, ordered = aliased(Event, name="unmatched_r"), aliased(Event, name="ordered")
    s2, on_s2 = _purchasers_stage(funnel)
    blank = literal("")
    if taken_back:
        bought_before = exists().where(Unindexed(ordered.type) == "purchase", refund_of(r, ordered), ~scope(ordered))
        where: tuple[Any, ...] = (r.id.in_(refunded_before(scope)), ~bought_before)
    else:
        where = (scope(r), ~exists().where(Unindexed(ordered.type) == "purchase", refund_of(r, ordered)))

    def signed(value: Any) -> Any:
        return -value if taken_back else value

    return [
        select(*tally_row(session, basis, s2.funnel, moment, s2.channel, UNMATCHED, blank, blank, currency_of(r), signed(func.count()), signed(func.sum(amount_of(session, r))), lead=r.lead_id))
        .select_from(r).join(s2, on_s2(r)).where(Unindexed(r.type) == "refund", r.at >= s2.entered_at, *where).group_by(BY_KEY)
        for basis, moment in ((COHORT, s2.cohort_at), (CALENDAR, r.at))
    ]


def refunded_before(scope: Condition) -> Select[Any]:
    """The ids of the refunds stored before the scope's purchases of their order."""
    found, earlier = aliased(Event, name="found_p"), aliased(Event, name="earlier_r")
    return select(earlier.id).select_from(found).join(earlier, refund_of(earlier, found, Unindexed)).where(Unindexed(found.type) == "purchase", scope(found), ~scope(earlier))


def purchases_after(session: Session, kind: str, scope: Condition) -> Select[Any]:
    """The ids of the purchases the touches of `kind` in `scope` came before: the lead's, from the
    touch on (an email's: within the attribution window after its click)."""
    t, p2 = aliased(Event if kind == "channel" else Delivery, name="new_touch"), aliased(Event, name="touched_p")
    at = t.at if kind == "channel" else t.clicked_at
    after = [p2.lead_id == t.lead_id, Unindexed(p2.type) == "purchase", p2.at >= at]
    if kind == "email":
        after.append(before(session, p2.at, at, ATTRIBUTION_WINDOW))
    return select(p2.id).select_from(t).join(p2, and_(*after)).where(scope(t), at.is_not(None))


def touch_moves(session: Session, kind: str, scope: Condition, other_than: Any = None) -> list[Select[Any]]:
    """New touches of `kind` in `scope` (subscriptions, first clicks) of purchases already counted:
    each such purchase's shares taken back as they were counted without these touches, and counted
    again with them (a source or a click recorded after the purchase it came before). `other_than`:
    a funnel whose purchases are left out (the one the lead is entering now counts them afresh)."""
    bought_after = purchases_after(session, kind, scope)
    moved = {"kinds": (kind,), "excluded": other_than is not None}
    return [
        *attribution_parts(session, other_than, lambda p: p.id.in_(bought_after), net_of(session), kept=lambda touch: ~scope(touch), sign=-1, **moved),
        *attribution_parts(session, other_than, lambda p: p.id.in_(bought_after), net_of(session), **moved),
    ]


BY_LEAD_FIGURES: Final = ("reached", "skipped", "timed", "lasted", HOLDOUT, "sent", "opened", "clicked", "unsubscribed", "purchases_7d", "refunds_7d")
"""The figures counted by lead (its stage entries, its emails and what followed them): the only ones
kept under the `products` split, whose groups count a purchase under its own product instead."""
PRODUCT_FIGURES: Final = {
    f"product_{figure}": figure
    for figure in ("revenue", "customers", "refunded", "refunded_orders", "customer_days", "customer_repeats", "refunded_order_days", "refunded_order_repeats")
}
"""The revenue figures again per product of the purchase (or refund), `step` the product (empty: none),
for a report by product; each its whole-report figure. A pair of days' earlier day is in `stage`."""


CALENDAR_DISTINCT: Final = {
    "purchase": ("customers", "customer_days", "customer_repeats"),
    "refund": ("refunded_orders", "refunded_order_days", "refunded_order_repeats"),
}
"""The calendar tallies of distinct counts: per event type, the report's figure, the figure of its days and that of its pairs of days."""


def calendar_distinct_parts(session: Session, scope: Condition, funnel: Any, kind: str) -> list[Select[Any]]:
    """Paying customers (`kind` purchase) or refunded orders (refund) by calendar, kept so that
    any period's count is a sum of tally rows.

    A lead (or an order; per funnel and currency) counts in a period if it has an event on
    at least one of the period's days. With its event days d1 < d2 < … that is the number
    of those days in the period less the number of consecutive pairs (dk, dk+1) both in it.
    So each day counts +1 (`customer_days`, on its day) and each consecutive pair −1 where
    the report finds both days in its slice (`customer_repeats`, on the later day, `step`
    the earlier one). A batch of events adds its new days, the pairs they make, and takes
    back each earlier pair a new day now splits.

    The same per product of the events (a customer of each product, a refunded order of each), in
    the same pass: `PRODUCT_FIGURES`, the product in `step` and a pair's earlier day in `stage`.
    """
    _, days_figure, repeats_figure = CALENDAR_DISTINCT[kind]
    e, touched = aliased(Event, name=f"{kind}_e"), aliased(Event, name="touched")
    s, on_s = _purchasers_stage(funnel)
    who = e.lead_id if kind == "purchase" else order_key(e)
    day = day_of(session, e.at)
    per = _tried(("all", "product"), "per")
    days = (
        select(
            s.funnel.label("funnel"), s.channel.label("channel"), who.label("who"), currency_of(e).label("currency"), day.label("day"), e.lead_id,
            per.c.per.label("per"), case((per.c.per == "product", product_key(e)), else_=literal("")).label("product"),
            func.min(e.at).label("first_at"), func.max(case((scope(e), 0), else_=1)).label("old"),
        )
        .select_from(OuterFirst(join(e, s, on_s(e)), per, true()))
        .where(Unindexed(e.type) == kind, e.at >= s.entered_at, e.lead_id.in_(select(touched.lead_id).where(Unindexed(touched.type) == kind, scope(touched))))
        .group_by(text("1, 2, 3, 4, 5, 6, 7, 8"))
        .subquery(f"{kind}_days")
    )
    one = {"partition_by": (days.c.who, days.c.funnel, days.c.currency, days.c.per, days.c.product), "order_by": days.c.first_at}
    pairs = select(
        days, func.lead(days.c.first_at).over(**one).label("next_at"), func.lead(days.c.old).over(**one).label("next_old"),
        func.min(case((days.c.old == 1, days.c.first_at))).over(**one, rows=(1, None)).label("next_old_at"),
    ).subquery(f"{kind}_day_pairs")
    blank = literal("")
    earlier = cast(day_of(session, pairs.c.first_at), String)
    by_product = pairs.c.per == "product"

    def part(moment: Any, figure: str, earlier_day: Any, n: Any, *where: Any) -> Select[Any]:
        named = case((by_product, literal(f"product_{figure}")), else_=literal(figure))
        stage, step = case((by_product, earlier_day), else_=blank), case((by_product, pairs.c.product), else_=earlier_day)
        return (
            select(*tally_row(session, CALENDAR, pairs.c.funnel, moment, pairs.c.channel, named, stage, step, pairs.c.currency, n, lead=pairs.c.lead_id))
            .where(*where).group_by(BY_KEY)
        )

    return [
        part(pairs.c.first_at, days_figure, blank, func.count(), pairs.c.old == 0),
        part(pairs.c.next_at, repeats_figure, earlier, func.count(), pairs.c.next_at.is_not(None), or_(pairs.c.old == 0, pairs.c.next_old == 0)),
        part(pairs.c.next_old_at, repeats_figure, earlier, -func.count(), pairs.c.old == 1, pairs.c.next_old_at.is_not(None), pairs.c.next_old == 0),
    ]


# Attribution ------------------------------------------------------------------------------

ATTRIBUTED: Final = {"channel": ("attributed_channel", "decayed_channel"), "email": ("attributed_email", "decayed_email")}
"""Per kind of touch, the figure of its rank-based shares (`stage` "rank/count", `step` the label,
`detail` the currency, `amount` the net revenue of the purchases it touched at that place) and the
figure of its time-decay shares (`amount` each purchase's net revenue times the touch's weight)."""
ATTRIBUTION_FIGURES: Final = tuple(figure for pair in ATTRIBUTED.values() for figure in pair)
UNSPLIT_FIGURES: Final = (*ATTRIBUTION_FIGURES, *PRODUCT_FIGURES)
"""Figures only ever read by channel (attribution; the revenue per product), so kept under no split."""


def kept_under(split: str, figure: Any) -> Any:
    """Whether the fold files a writer's row of `figure` under `split` too, besides its channel: a lead
    split keeps what its reports read, the products bought only what is counted by lead. `figure` a
    name (the fold), or a column (the recount's SQL)."""
    if isinstance(figure, str):
        return figure in BY_LEAD_FIGURES if split == PRODUCTS else figure not in UNSPLIT_FIGURES
    return figure.in_(BY_LEAD_FIGURES) if split == PRODUCTS else figure.not_in(UNSPLIT_FIGURES)
LABEL_LENGTH: Final = 200
"""A touch's label is kept to the length of the tallies' `step` column, in the report from the facts too."""


def touches(session: Executor, kind: str, kept: Condition | None = None) -> Any:
    """Every touch of one kind, as rows of `lead_id, at, id, label, flow`: the sources a lead was seen
    with (`channel`: its subscriptions, labelled by their `channel`, else `utm_source`) or the emails
    a person clicked (`email`: the first click, labelled "stage/step", `flow` the email's funnel).
    `kept` leaves out the touches it is false for (a tally taking back what it counted before them)."""
    if kind == "channel":
        s = aliased(Event, name="s")
        label = func.substr(func.coalesce(s.properties["source"]["channel"].as_string(), s.properties["source"]["utm_source"].as_string()), 1, LABEL_LENGTH)
        stmt = select(s.lead_id, s.at, s.id, label.label("label"), literal(None, String).label("flow")).where(Unindexed(s.type) == "subscribed", label.is_not(None))
        return (stmt.where(kept(s)) if kept is not None else stmt).subquery("sources")
    d = aliased(Delivery, name="c")
    label = func.substr(d.stage + literal("/") + d.step_id, 1, LABEL_LENGTH)
    stmt = select(d.lead_id, d.clicked_at.label("at"), d.id, label.label("label"), d.flow).where(d.clicked_at.is_not(None))
    return (stmt.where(kept(d)) if kept is not None else stmt).subquery("clicks")


def touched_by(session: Executor, bought: Any, kind: str, touch: Any, window: Any) -> ColumnElement[bool]:
    """Whether a touch counts for a purchase (`bought`: rows with `lead_id, at`, and `funnel`): the
    lead's, at or before it; an email also of the purchase's funnel and clicked within `window` before it."""
    on = and_(touch.c.lead_id == bought.c.lead_id, touch.c.at <= bought.c.at)
    if kind == "email":
        on = and_(on, touch.c.flow == bought.c.funnel, before(session, bought.c.at, touch.c.at, window))
    return on


def decay_of(session: Executor, later: Any, earlier: Any) -> Any:
    """`domain.report.decay_weight` in SQL: a touch's raw time-decay weight."""
    return func.exp(-0.6931471805599453 * seconds_between(session, later, earlier) / TIME_DECAY_HALF_LIFE_S)


def attribution_parts(
    session: Session, funnel: Any, which: Callable[[Any], ColumnElement[bool]], amount: Callable[[Any], Any], *,
    kinds: tuple[str, ...] = ("channel", "email"), kept: Condition | None = None, sign: int = 1, counted: bool = True, excluded: bool = False,
) -> list[Select[Any]]:
    """The attribution tallies of the purchases `which` picks (an `Event` alias in), each at `amount`
    (of it), among its touches of `kinds` (less those `kept` is false for), times `sign`; `counted`:
    whether the rows count the purchases too (not for a refund's correction). On both bases, as revenue.

    The rank-based models need each touch's place among its purchase's touches; time decay needs its
    share of the purchase's weights. Both are kept, so any model of the default window adds up tally rows.
    """
    p = aliased(Event, name="ap")
    s0, on_s0 = _purchasers_stage(funnel, excluded=excluded)
    bought = (
        select(
            p.id.label("pid"), p.lead_id, p.at, s0.funnel, s0.cohort_at, s0.channel, amount(p).label("amount"), currency_of(p).label("currency"),
            lead_splits(is_postgres(session), p.lead_id).label("lead_split"),
        )
        .select_from(p).join(s0, on_s0(p)).where(Unindexed(p.type) == "purchase", p.at >= s0.entered_at, which(p))
        .subquery("bought")
    )
    blank = literal("")
    parts = []
    for kind in kinds:
        touch = touches(session, kind, kept)
        one = {"partition_by": (bought.c.pid, bought.c.funnel)}
        weight = decay_of(session, bought.c.at, touch.c.at)
        place = cast(func.row_number().over(**one, order_by=(touch.c.at, touch.c.id)), String) + literal("/") + cast(func.count().over(**one), String)
        joined = (
            select(
                bought.c.funnel, bought.c.cohort_at, bought.c.at, bought.c.channel, bought.c.amount, bought.c.currency, touch.c.label, bought.c.lead_split,
                place.label("place"), weight.label("w"), func.sum(weight).over(**one).label("total_w"),
            )
            .select_from(bought).join(touch, touched_by(session, bought, kind, touch, ATTRIBUTION_WINDOW))
            .subquery(f"{kind}_touched")
        )
        # Both figures on both bases in one pass over the purchases' touches, as `stage_entry_parts` does.
        ranked, decayed = ATTRIBUTED[kind]
        figures, bases = _tried((ranked, decayed), "figure"), _tried(BASES, "basis")
        is_ranked = figures.c.figure == ranked
        moment = case((bases.c.basis == COHORT, joined.c.cohort_at), else_=joined.c.at)
        value = case((is_ranked, joined.c.amount), else_=joined.c.amount * joined.c.w / joined.c.total_w)
        n = func.count() * sign if counted else literal(0)
        parts.append(
            select(*tally_row(
                session, bases.c.basis, joined.c.funnel, moment, joined.c.channel, figures.c.figure, case((is_ranked, joined.c.place), else_=blank),
                joined.c.label, joined.c.currency, n, func.sum(value) * sign, splits=joined.c.lead_split,
            ))
            .select_from(OuterFirst(OuterFirst(joined, figures, true()), bases, true()))
            .group_by(BY_KEY)
        )
    return parts


def given_back(session: Session, p: Any, refunds: Condition | None = None) -> Any:
    """The refunds of a purchase (those `refunds` is true for), as one number."""
    r = aliased(Event, name="given_back")
    return select(func.coalesce(func.sum(amount_of(session, r)), 0.0)).where(refund_of(r, p), *([refunds(r)] if refunds is not None else [])).scalar_subquery()


def net_of(session: Session) -> Callable[[Any], Any]:
    """A purchase's amount less all its refunds."""
    return lambda p: amount_of(session, p) - given_back(session, p)


def _purchasers_stage(funnel: Any, *, excluded: bool = False) -> tuple[Any, Callable[[Any], ColumnElement[bool]]]:
    """The first-stage rows of a purchase's lead: in every funnel, in `funnel`, or (`excluded`) in every other one."""
    s0 = aliased(StageEntry, name="s0")

    def on(p: Any) -> ColumnElement[bool]:
        condition = and_(s0.lead_id == p.lead_id, s0.position == 0)
        return condition if funnel is None else and_(condition, s0.funnel != funnel if excluded else s0.funnel == funnel)

    return s0, on
