"""The running tallies' statements: each figure of `cohort_tallies` as one SELECT over a scope.

`services/tallies.py` says what each figure counts and when they are written;
here each is built, as `INSERT … SELECT` parts over whichever rows a `scope`
condition picks (an entity or alias in, a condition out), so the engine's
running count, the catch-up of a first stage entry and the recount share one rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, and_, bindparam, exists, func, literal, literal_column, select, text
from sqlalchemy.orm import Session, aliased

from autofunnel.domain.statuses import DeliveryStatus
from autofunnel.domain.report import PURCHASE_WINDOW
from autofunnel.store.facts import amount_of, before, currency_of, day_of, order_key, order_of, refund_of
from autofunnel.store.models import Assignment, Delivery, Event, StageEntry
from autofunnel.store.queries import Executor

Condition = Callable[[Any], ColumnElement[bool]]
"""Which rows of an entity (or of an alias of it) a statement counts."""


TALLY_COLUMNS: Final = ("funnel", "cohort_day", "channel", "figure", "stage", "step", "detail", "n", "amount")
KEY_COLUMNS: Final = TALLY_COLUMNS[:7]

BY_KEY: Final = text("1, 2, 3, 4, 5, 6, 7")
"""Every tally statement groups by its key columns by position: the same expression in the
select list and in GROUP BY, bound parameters and all, on both backends."""


def tally_row(session: Session, funnel: Any, moment: Any, channel: Any, figure: Any, stage: Any, step: Any, detail: Any, n: Any, amount: Any = None) -> list[Any]:
    """The select list of one tally row, in `TALLY_COLUMNS` order."""
    return [
        funnel.label("funnel"), day_of(session, moment).label("cohort_day"), func.coalesce(channel, "").label("channel"),
        (literal(figure) if isinstance(figure, str) else figure).label("figure"), stage.label("stage"), step.label("step"), detail.label("detail"),
        n.label("n"), (amount if amount is not None else literal_column("0.0")).label("amount"),
    ]


def stage_entry_parts(session: Session, scope: Condition) -> list[Select[Any]]:
    e = StageEntry
    blank = literal("")

    def part(figure: str, n: Any, *where: Any) -> Select[Any]:
        return (
            select(*tally_row(session, e.funnel, e.cohort_at, e.channel, figure, e.stage, blank, blank, n))
            .where(scope(e), *where).group_by(BY_KEY)
        )

    a = Assignment
    # The lead's holdout group looked up entry by entry (by the unique key), not joined: for an
    # import's chunk of 5000 entries PostgreSQL chose to hash every lead's assignment instead,
    # 235 ms a chunk at 1M leads and growing with the list (a fifth of the import's time).
    group = select(a.value).where(a.lead_id == e.lead_id, a.flow == e.funnel, a.name == "holdout").scalar_subquery()
    holdout = (
        select(*tally_row(session, e.funnel, e.cohort_at, e.channel, "holdout", e.stage, blank, group, func.count()))
        .where(scope(e)).group_by(BY_KEY).having(group.is_not(None))
    )
    return [
        part("reached", func.count()),
        part("skipped", func.count(), e.skipped.is_(True)),
        part("timed", func.count(), e.since_previous_s.is_not(None)),
        part("lasted", func.count(), e.since_first_s.is_not(None)),
        holdout,
    ]


def email_first_stage(d: Any) -> tuple[Any, ColumnElement[bool]]:
    """The first-stage row (cohort and channel) of an email's lead in the email's funnel, and the
    join condition; an email counts for the funnel once the lead had entered it, as in the report."""
    s0 = aliased(StageEntry, name="s0")
    return s0, and_(s0.lead_id == d.lead_id, s0.funnel == d.flow, s0.position == 0, d.sent_at >= s0.entered_at)


def email_parts(session: Session, scope: Condition) -> list[Select[Any]]:
    d = Delivery
    s0, on_s0 = email_first_stage(d)
    sent = (d.kind == "email", d.status == DeliveryStatus.SENT, scope(d))

    def part(figure: str, n: Any) -> Select[Any]:
        return (
            select(*tally_row(session, d.flow, s0.cohort_at, s0.channel, figure, d.stage, d.step_id, literal(""), n))
            .select_from(d).join(s0, on_s0).where(*sent).group_by(BY_KEY)
        )

    return [
        part("sent", func.count()),
        part("opened", func.count(d.opened_at)).having(func.count(d.opened_at) > 0),
        part("clicked", func.count(d.clicked_at)).having(func.count(d.clicked_at) > 0),
    ]


def engagement_parts(session: Session, figure: str, scope: Condition) -> list[Select[Any]]:
    """People's first opens or first clicks (`figure`) of the sent emails in `scope`, grouped as `email_parts` groups them."""
    d = Delivery
    s0, on_s0 = email_first_stage(d)
    return [
        select(*tally_row(session, d.flow, s0.cohort_at, s0.channel, figure, d.stage, d.step_id, literal(""), func.count()))
        .select_from(d).join(s0, on_s0).where(d.kind == "email", d.status == DeliveryStatus.SENT, scope(d)).group_by(BY_KEY)
    ]


def unsubscribe_from(u: Any, d: Any) -> ColumnElement[bool]:
    return and_(u.lead_id == d.lead_id, u.type == "unsubscribed", u.properties["delivery"].as_integer() == d.id)


def purchase_after(session: Executor, p: Any, d: Any) -> ColumnElement[bool]:
    return and_(p.lead_id == d.lead_id, p.type == "purchase", p.at >= d.sent_at, before(session, p.at, d.sent_at, PURCHASE_WINDOW))


def event_parts(session: Session, scope: Condition, one_funnel: bool) -> list[Select[Any]]:
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
        select(*tally_row(session, s0.funnel, s0.cohort_at, s0.channel, "revenue", blank, blank, currency_of(p), func.count(), func.sum(amount_of(session, p))))
        .select_from(p).join(s0, on_s0(p)).where(*bought).group_by(BY_KEY)
    )
    customers = (
        select(*tally_row(session, s0.funnel, s0.cohort_at, s0.channel, "customers", blank, blank, currency_of(p), func.count(p.lead_id.distinct())))
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
        select(*tally_row(session, s2.funnel, s2.cohort_at, s2.channel, "refunded", blank, blank, currency_of(r), func.count(), func.sum(amount_of(session, r))))
        .select_from(r).join(s2, on_s2(r)).where(*refunded).group_by(BY_KEY)
    )
    refunded_orders = (
        select(*tally_row(session, s2.funnel, s2.cohort_at, s2.channel, "refunded_orders", blank, blank, currency_of(r), func.count(order_key(r).distinct())))
        .select_from(r).join(s2, on_s2(r)).where(*refunded, ~order_counted_before).group_by(BY_KEY)
    )
    d = Delivery
    s1, on_s1 = email_first_stage(d)
    u = aliased(Event, name="u")
    followed = []
    for figure, event, on in (("unsubscribed", u, unsubscribe_from(u, d)), ("purchases_7d", p, purchase_after(session, p, d))):
        amount = func.sum(amount_of(session, p)) if figure == "purchases_7d" else None
        stmt = (
            select(*tally_row(session, d.flow, s1.cohort_at, s1.channel, figure, d.stage, d.step_id, blank, func.count(), amount))
            .select_from(event).join(d, on).join(s1, on_s1)
            .where(scope(event), d.kind == "email", d.status == DeliveryStatus.SENT)
            .group_by(BY_KEY)
        )
        if funnel is not None:
            stmt = stmt.where(d.flow == funnel)
        followed.append(stmt)
    # A refund of a purchase that followed an email: counted with the refund when the purchase is
    # already stored, else with the purchase (the refunds stored before it, outside the scope).
    for counted, outside in ((r, None), (p, r)):
        stmt = (
            select(*tally_row(session, d.flow, s1.cohort_at, s1.channel, "refunds_7d", d.stage, d.step_id, blank, func.count(), func.sum(amount_of(session, r))))
            .select_from(r).join(p, refund_of(r, p)).join(d, purchase_after(session, p, d)).join(s1, on_s1)
            .where(scope(counted), d.kind == "email", d.status == DeliveryStatus.SENT, *([~scope(outside)] if outside is not None else []))
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
