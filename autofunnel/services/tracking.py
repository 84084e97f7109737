"""What the public links in emails do: opens, clicks, offers, countdowns, unsubscribes.

Every link carries a token signed for its purpose (`autofunnel.tokens`); a token
that does not load, or loads to the wrong shape, is `BadToken` and the web shows
a 404 page. Nothing here trusts the query string: a click goes to the URL signed
into its token and nowhere else.

Mail scanners (Microsoft Safe Links, Proofpoint, Mimecast, …) fetch every URL in
an email, often within seconds of delivery. So:

- the unsubscribe link's GET only *describes* what a POST would do
  (`unsubscribe_preview`); only `unsubscribe` changes anything;
- opens and clicks that look automated (`looks_automated`) are still recorded
  as `opened`/`clicked` events, with `bot: true`, but never set the delivery's
  `opened_at`/`clicked_at`, which feed `opened:`/`clicked:` conditions and rates.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Select, bindparam, case, literal, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from autofunnel.domain.statuses import DeliveryStatus, LeadStatus
from autofunnel.domain.model import Funnel
from autofunnel.errors import BadToken, DatabaseUnavailableError, NotFoundError
from autofunnel.mail.countdown import draw_countdown
from autofunnel.services.events import record_events
from autofunnel.services.inputs import EventInput
from autofunnel.services.runtime import Runtime
from autofunnel.services.tallies import count_engagement, ids_in
from autofunnel.store.lead_facts import deadlines_of
from autofunnel.store.models import Delivery, Lead
from autofunnel.store.queries import chunks

log = logging.getLogger(__name__)

# Bot rules ------------------------------------------------------------------------

BOT_WINDOW: Final = timedelta(seconds=10)
"""An open or click this soon after the email was handed to SMTP is a scanner's:
people do not open and click within seconds, security gateways do, on delivery."""

SCANNER_AGENTS: Final = (
    # Email security gateways and link scanners that say who they are.
    "bingpreview",          # Microsoft Safe Links / Outlook link preview
    "barracuda",            # Barracuda Email Security
    "proofpoint",           # Proofpoint URL Defense
    "mimecast",             # Mimecast URL Protect
    "ironport",             # Cisco Secure Email
    "fireeye",              # Trellix/FireEye
    "trendmicro",           # Trend Micro
    "forcepoint",           # Forcepoint
    "symantec",             # Symantec / Broadcom messaging security
    "appriver",             # AppRiver / Zix
    # Search and link-preview crawlers.
    "googlebot", "bingbot", "slackbot", "twitterbot", "linkedinbot", "facebookexternalhit",
    # Scripts and headless browsers: no person reads mail with these.
    "python-requests", "python-urllib", "python-httpx", "aiohttp", "go-http-client",
    "curl/", "wget/", "libwww-perl", "java/", "okhttp/", "scrapy", "headlesschrome", "phantomjs",
)
"""Lower-case fragments of User-Agent headers that mark an automated fetch.

Deliberately NOT here: Gmail's and Yahoo's image proxies (`GoogleImageProxy`,
`YahooMailProxy`), which fetch an image because a person opened the email, and
Outlook (`Microsoft Outlook`, `Microsoft Office`), which is a person's mail client.
Apple Mail Privacy Protection and Safe Links in a normal browser disguise
(e.g. a plain `Mozilla/5.0 … Chrome/…`) cannot be told apart by their agent;
the BOT_WINDOW rule catches the ones that fetch on delivery.
"""

_SCANNER = re.compile("|".join(re.escape(fragment) for fragment in SCANNER_AGENTS))


def looks_automated(user_agent: str | None, sent_at: datetime | None, now: datetime, method: str = "GET") -> bool:
    """True when an open or click was most likely made by a machine, not the reader.

    - a HEAD request (scanners check links with it; a reader's client GETs);
    - no User-Agent at all (every mail client and browser sends one);
    - a User-Agent in `SCANNER_AGENTS`;
    - within `BOT_WINDOW` of `sent_at`, or before it (the email is still being
      handed over when `sent_at` is not yet written: pass `now` for that case).
    `sent_at=None` means the send time is unknown: only the agent is judged.
    """
    agent = (user_agent or "").strip().lower()
    if method.upper() == "HEAD" or not agent or _SCANNER.search(agent):
        return True
    return sent_at is not None and now - sent_at < BOT_WINDOW


# Tokens ---------------------------------------------------------------------------


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _load(rt: Runtime, purpose: str, token: str, shape: tuple[type, ...]) -> list[Any]:
    """The token's payload, checked to be a list of exactly these types (ints: positive ids)."""
    payload = rt.tokens.load(purpose, token)
    if not isinstance(payload, list) or len(payload) != len(shape):
        raise BadToken()
    for value, kind in zip(payload, shape, strict=True):
        if not (_is_id(value) if kind is int else isinstance(value, kind)):
            raise BadToken()
    return payload


def _redirectable(url: str) -> bool:
    """Only http(s) URLs without control characters are ever sent as a Location."""
    return url.lower().startswith(("http://", "https://")) and not any(ord(ch) < 32 or ord(ch) == 127 for ch in url)


# Opens and clicks -----------------------------------------------------------------


def track_open(rt: Runtime, token: str, user_agent: str | None, *, method: str = "GET") -> None:
    """The open pixel was fetched: record an `opened` event, and `opened_at` if a person opened it."""
    (delivery_id,) = _load(rt, "open", token, (int,))
    _record_engagement(rt, "opened", delivery_id, user_agent, method, {})


def track_click(rt: Runtime, token: str, user_agent: str | None, *, method: str = "GET") -> str:
    """A tracked link was followed: record a `clicked` event (and the implied open); the URL to go to.

    The URL is exactly the one signed into the token. A click is never lost to
    the tracking: if the database cannot record it, the reader still gets
    where the link points, and the failure is logged.
    """
    delivery_id, url = _load(rt, "click", token, (int, str))
    if not _redirectable(url):
        raise BadToken()
    _record_engagement(rt, "clicked", delivery_id, user_agent, method, {"url": url})
    return url


def _record_engagement(rt: Runtime, kind: str, delivery_id: int, user_agent: str | None, method: str, extra: dict[str, Any]) -> None:
    item = Engagement(kind, delivery_id, user_agent, method, extra, at=rt.clock.now())
    if rt.settings.tracking_batch_seconds > 0:
        rt.engagements.add(item)  # written within that many seconds, with the rest of the batch (services/write_behind.py)
        return
    try:
        record_engagements(rt, [item])
    except (OperationalError, DatabaseUnavailableError):
        log.exception("could not record %s of delivery %s; the reader was served anyway", kind, delivery_id)


@dataclass(frozen=True)
class Engagement:
    """One open or click of a tracked email, as its link or pixel was fetched (`at`: when; default the clock's now)."""

    kind: str
    delivery_id: int
    user_agent: str | None
    method: str = "GET"
    extra: dict[str, Any] | None = None
    at: datetime | None = None


def record_engagements(rt: Runtime, items: list[Engagement]) -> None:
    """Opens and clicks, each at its `at`: their `opened`/`clicked` events in one batch,
    then each person's first open or click on its delivery. One fetch of a link written
    in its request is a list of one; a web process's gathered fetches or a simulation's
    virtual half-hour are written at once.

    The bot rule is judged against the moment of each fetch, not of the write, so an
    open gathered for a second counts exactly as one written in its request."""
    now = rt.clock.now()
    with rt.db.look() as connection:
        rows = {row.id: row for row in connection.execute(_deliveries_statement(), {"ids": sorted({item.delivery_id for item in items})})}
    events: list[EventInput] = []
    human: list[tuple[datetime, Engagement]] = []
    for item in items:
        delivery = rows.get(item.delivery_id)
        if delivery is None:  # the row is gone (a database restored from an older backup): nothing to count against
            continue
        at = item.at or now
        # A delivery still `sending` was handed to SMTP moments ago; its sent_at is not written yet.
        sent_at = delivery.sent_at or (at if delivery.status == DeliveryStatus.SENDING else None)
        bot = looks_automated(item.user_agent, sent_at, at, item.method)
        properties = {"delivery": item.delivery_id, "flow": delivery.flow, "step": delivery.step_id, "bot": bot, **(item.extra or {})}
        events.append(EventInput(item.kind, at, properties, lead_id=delivery.lead_id))
        if not bot:
            human.append((at, item))
    if events:
        record_events(rt, events)
    if not human:
        return
    # First human open/click only, at the earliest fetch; a click implies the open (the pixel may be blocked).
    # Most fetches are of an email already opened (a reader opens it again, a client reloads it):
    # those that were marked when read above are left out, and the UPDATE's guard settles any race.
    human.sort(key=lambda pair: pair[0])
    firsts: dict[str, dict[int, datetime]] = {"opened": {}, "clicked": {}}
    for at, item in human:
        delivery = rows[item.delivery_id]
        if delivery.opened_at is None:
            firsts["opened"].setdefault(item.delivery_id, at)
        if item.kind == "clicked" and delivery.clicked_at is None:
            firsts["clicked"].setdefault(item.delivery_id, at)
    if not firsts["opened"] and not firsts["clicked"]:
        return
    with rt.db.transaction() as session:
        for figure, moments in firsts.items():
            if not moments:
                continue
            marked = _mark_first(session, figure, moments)
            if marked:  # an email still `sending` gets its opens counted with its send, when it is recorded sent
                count_engagement(session, figure, ids_in(sorted(marked)))


@functools.cache
def _deliveries_statement() -> Select[Any]:
    """What `record_engagements` reads of the fetched emails, built once: every batch of opens runs it."""
    return select(
        Delivery.id, Delivery.lead_id, Delivery.flow, Delivery.step_id, Delivery.status, Delivery.sent_at, Delivery.opened_at, Delivery.clicked_at,
    ).where(Delivery.id.in_(bindparam("ids", expanding=True)))


def _mark_first(session: Session, figure: str, moments: dict[int, datetime]) -> set[int]:
    """Set `opened_at`/`clicked_at` of the deliveries that have none yet; the ids set.

    One statement per 500 deliveries: the `IS NULL` guard and RETURNING make it
    exact when two web processes write the same delivery's first open at once
    (PostgreSQL re-checks the guard after waiting for the other's row lock).
    """
    table = Delivery.__table__
    column = table.c[f"{figure}_at"]
    done: set[int] = set()
    for part in chunks(sorted(moments), 500):
        moment = case(*[(table.c.id == delivery_id, literal(moments[delivery_id], column.type)) for delivery_id in part])
        done.update(session.scalars(update(table).where(table.c.id.in_(part), column.is_(None)).values({column: moment}).returning(table.c.id)))
    return done


# Offers and countdowns ------------------------------------------------------------


def _deadline(rt: Runtime, lead_id: int, flow: str, name: str) -> datetime | None:
    with rt.db.read() as session:
        return deadlines_of(session, [lead_id]).get((lead_id, flow), {}).get(name)


def offer_target(rt: Runtime, token: str) -> str:
    """Where an offer link leads now: the live `url` until the lead's deadline passes, then `expired_url`.

    A deadline that never started for this lead leaves the offer live.
    """
    lead_id, slug, name, _delivery_id = _load(rt, "offer", token, (int, str, str, int))
    flow = rt.project.flows.get(slug)
    offer = flow.offers.get(name) if isinstance(flow, Funnel) else None
    if offer is None:
        raise NotFoundError(f"the offer {name!r} is no longer in {slug!r}", field="offer", code="unknown_offer")
    due = _deadline(rt, lead_id, slug, offer.deadline)
    return offer.url if due is None or rt.clock.now() < due else offer.expired_url


def countdown_image(rt: Runtime, token: str) -> bytes:
    """A GIF of the time left until the lead's deadline (`offer expired` once it passed)."""
    lead_id, slug, name = _load(rt, "countdown", token, (int, str, str))
    due = _deadline(rt, lead_id, slug, name)
    return draw_countdown(None if due is None else due - rt.clock.now())


# Unsubscribing --------------------------------------------------------------------


@dataclass(frozen=True)
class UnsubscribePreview:
    masked_email: str
    unsubscribed: bool


def mask_email(email: str) -> str:
    """`anna@example.com` → `a***@example.com`: enough to recognise, too little to harvest."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def _lead(rt: Runtime, token: str) -> tuple[int, int, str, str]:
    lead_id, delivery_id = _load(rt, "unsubscribe", token, (int, int))
    with rt.db.read() as session:
        row = session.execute(select(Lead.email, Lead.status).where(Lead.id == lead_id)).first()
    if row is None:
        raise NotFoundError(f"no lead {lead_id}", field="lead", code="unknown_lead")
    return lead_id, delivery_id, row.email, row.status


def unsubscribe_preview(rt: Runtime, token: str) -> UnsubscribePreview:
    """Who the link would unsubscribe. Changes nothing: scanners fetch every link with GET."""
    _, _, email, status = _lead(rt, token)
    return UnsubscribePreview(mask_email(email), status in (LeadStatus.UNSUBSCRIBED, LeadStatus.ERASED))


def unsubscribe(rt: Runtime, token: str, *, one_click: bool = False) -> UnsubscribePreview:
    """Unsubscribe the lead from everything: an `unsubscribed` event, which suppresses the lead
    and cancels its queued emails for every funnel in the transaction that records it.

    Idempotent: a lead already unsubscribed (or erased) is left as it is, and
    no second event is recorded.
    """
    lead_id, delivery_id, email, status = _lead(rt, token)
    if status not in (LeadStatus.UNSUBSCRIBED, LeadStatus.ERASED):
        via = "one-click" if one_click else "link"
        record_events(rt, [EventInput("unsubscribed", rt.clock.now(), {"delivery": delivery_id, "via": via}, lead_id=lead_id)])
    return UnsubscribePreview(mask_email(email), True)
