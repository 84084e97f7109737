"""What callers send, checked before anything is written.

The API, webhooks and imports all pass plain decoded JSON here. Every check
names the offending field (`events[3].at`), so a client can fix its request;
a batch is parsed whole before any of it is stored, which is what makes
"nothing is partly written" cheap to keep.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from autofunnel.errors import InvalidInputError, NotFoundError

MAX_BATCH = 1000
SOURCE_KEYS = ("channel", "utm_source", "utm_medium", "utm_campaign", "utm_content", "referrer")
SUBSCRIBE_KEYS = ("email", "funnel", "first_name", "fields", "tags", "timezone", "source", "owner", "at")
LARGEST_ID = 2**63 - 1
"""The largest id a 64-bit key column holds."""

EVENT_KEYS = ("type", "email", "lead_id", "id", "at", "properties")
FUTURE_SLACK = timedelta(minutes=5)
"""How far ahead of our clock an `at` may be (a sender's clock running a little fast); beyond, it is refused."""


_PLAIN_EMAIL = re.compile(
    r"^(?=.{1,254}$)(?=[^@]{1,64}@)[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$"
)
_SPECIAL_USE_ENDINGS = tuple(mark + name for name in SPECIAL_USE_DOMAIN_NAMES for mark in ".@")
"""`.local`, `@local` …: addresses at special-use domains, which the quick check leaves to the full one."""


@lru_cache(maxsize=65536)
def _checked_email(text: str) -> str | EmailNotValidError:
    """The normalized address, or the reason it is not one; cached, since the same
    shoppers come back batch after batch and full validation costs ~0.1 ms."""
    try:
        checked = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        return exc
    return (checked.ascii_email or checked.normalized).lower()


def normalize_email(value: Any, field_name: str = "email") -> str:
    """Leads are keyed by email, trimmed and lower-cased (SPEC.md, "Words").

    International domains are kept in their ASCII (punycode) form, which every
    mail server takes; a non-ASCII local part needs SMTPUTF8, which many
    servers refuse, so it is rejected here rather than failing at send time.
    A plain ASCII address (what nearly every list holds) passes a quick pattern
    that accepts only what email-validator accepts, uncached: a million-row
    import meets each address once, and the cache's bookkeeping cost more than
    the pattern. Anything else goes to email-validator.
    """
    if not isinstance(value, str) or not (text := value.strip()):
        raise InvalidInputError("an email address is required", field=field_name, code="required")
    lowered = text.lower()
    # A domain label with "--" (IDNA reserves it in the third and fourth places, `xn--…`) goes to the full check too.
    if _PLAIN_EMAIL.match(lowered) and not lowered.endswith(_SPECIAL_USE_ENDINGS) and "--" not in lowered.rpartition("@")[2]:
        return lowered
    checked = _checked_email(text)
    if isinstance(checked, EmailNotValidError):
        raise InvalidInputError(f"{value!r} is not a valid email address: {checked}", field=field_name)
    if len(checked) > 320:
        raise InvalidInputError("an email address has at most 320 characters", field=field_name)
    return checked


def parse_moment(value: Any, field_name: str, default: datetime) -> datetime:
    """ISO 8601 with a zone (`Z` or an offset); a moment without one is refused, not guessed."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidInputError("expected an ISO 8601 time such as 2026-03-01T09:30:00Z", field=field_name)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"{value!r} is not an ISO 8601 time such as 2026-03-01T09:30:00Z", field=field_name) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInputError(f"{value!r} has no timezone; add Z or an offset such as +02:00", field=field_name)
    return moment.astimezone(UTC)


def parse_past_moment(value: Any, field_name: str, now: datetime) -> datetime:
    """A fact's moment: default now, at most FUTURE_SLACK ahead (SPEC.md: never more than 5 minutes in the future)."""
    moment = parse_moment(value, field_name, now)
    if moment > now + FUTURE_SLACK:
        raise InvalidInputError(f"{value!r} is more than 5 minutes in the future; facts are recorded when they happened", field=field_name)
    return moment
TICK_TOLERANCE = timedelta(minutes=1)


def check_tick_moment(moment: datetime, now: datetime, *, dry_run: bool, force: bool) -> None:
    """Refuse a real pass (not `--dry-run`) at a moment more than a minute from the clock, unless forced.

    Such a pass sends real emails stamped with a date that is not now, counts
    them in `status` as sent "in the last minute", and makes the real opens that
    follow look automated (opened "before" they were sent). `simulate` and
    `autofunnel.testing` are the way to move time.
    """
    if dry_run or force or abs(moment - now) <= TICK_TOLERANCE:
        return
    raise InvalidInputError(
        f"--now {moment.isoformat().replace('+00:00', 'Z')} is {_span(abs(moment - now))} from the clock: a real pass then would send real "
        "emails dated wrongly, count them in `status` as just sent and make real opens look automated. "
        "Add --dry-run to see what that pass would do, or --force to send anyway",
        field="--now",
    )


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}(s)" + (f" {seconds % size // 60} minute(s)" if unit == "hour" and seconds % size >= 60 else "")
    return f"{seconds} second(s)"


def _text(value: Any, field_name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError("expected text", field=field_name)
    value = value.strip()
    if len(value) > limit:
        raise InvalidInputError(f"at most {limit} characters", field=field_name)
    return value or None


def _object(value: Any, field_name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise InvalidInputError("expected an object", field=field_name)
    _check_finite(value, field_name)
    return dict(value)


def _check_finite(value: Any, field_name: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError("numbers must be finite", field=field_name)
    if isinstance(value, dict):
        for item in value.values():
            _check_finite(item, field_name)
    elif isinstance(value, list):
        for item in value:
            _check_finite(item, field_name)


def _unknown(data: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise InvalidInputError(f"unknown field {key!r}; allowed: {', '.join(allowed)}", field=f"{prefix}{key}", code="unknown_field")


def parse_timezone(value: Any, field_name: str = "timezone") -> str | None:
    name = _text(value, field_name, 64)
    if name is None:
        return None
    if not _is_zone(name):
        raise InvalidInputError(f"{name!r} is not an IANA timezone such as Europe/Berlin", field=field_name)
    return name


@lru_cache(maxsize=1024)
def _is_zone(name: str) -> bool:
    """Whether the zone database knows `name`; cached, as a list repeats a few zones row after row."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class SubscribeInput:
    email: str
    funnel: str
    at: datetime
    first_name: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    timezone: str | None = None
    source: dict[str, str] = field(default_factory=dict)
    owner: str | None = None


def parse_subscribe(data: Any, now: datetime) -> SubscribeInput:
    if not isinstance(data, dict):
        raise InvalidInputError("expected a JSON object", code="bad_json")
    _unknown(data, SUBSCRIBE_KEYS, "")
    funnel = _text(data.get("funnel"), "funnel", 100)
    if not funnel:
        raise InvalidInputError("the funnel to subscribe to is required", field="funnel", code="required")
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() and len(t) <= 100 for t in tags):
        raise InvalidInputError("expected a list of tags (text, at most 100 characters each)", field="tags")
    source_raw = _object(data.get("source"), "source")
    _unknown(source_raw, SOURCE_KEYS, "source.")
    source = {key: value for key, raw in source_raw.items() if (value := _text(raw, f"source.{key}", 500))}
    owner = data.get("owner")
    return SubscribeInput(
        email=normalize_email(data.get("email")),
        funnel=funnel,
        at=parse_past_moment(data.get("at"), "at", now),
        first_name=_text(data.get("first_name"), "first_name", 200),
        fields=_object(data.get("fields"), "fields"),
        tags=tuple(dict.fromkeys(t.strip() for t in tags)),
        timezone=parse_timezone(data.get("timezone")),
        source=source,
        owner=normalize_email(owner, "owner") if owner is not None else None,
    )


@dataclass(frozen=True)
class EventInput:
    type: str
    at: datetime
    properties: dict[str, Any]
    key: str | None = None
    email: str | None = None
    lead_id: int | None = None


def parse_events(data: Any, now: datetime) -> list[EventInput]:
    """One event object or a list of at most 1000; any bad one rejects the whole batch."""
    single = isinstance(data, dict)
    items = [data] if single else data
    if not isinstance(items, list):
        raise InvalidInputError("expected an event object or a list of them", code="bad_json")
    if not items:
        raise InvalidInputError("the list of events is empty", code="required")
    if len(items) > MAX_BATCH:
        raise InvalidInputError(f"at most {MAX_BATCH} events per request, got {len(items)}", code="too_many")
    return [parse_event(item, "" if single else f"[{index}].", now) for index, item in enumerate(items)]


def parse_event(item: Any, prefix: str, now: datetime) -> EventInput:
    if not isinstance(item, dict):
        raise InvalidInputError("expected an event object", field=prefix.rstrip(".") or None)
    _unknown(item, EVENT_KEYS, prefix)
    kind = item.get("type")
    if kind is None or (isinstance(kind, str) and not kind.strip()):
        raise InvalidInputError("the event type is required", field=f"{prefix}type", code="required")
    if not isinstance(kind, str) or len(kind) > 64:
        raise InvalidInputError("the event type must be a string of at most 64 characters", field=f"{prefix}type")
    email = item.get("email")
    lead_id = item.get("lead_id")
    if email is None and lead_id is None:
        raise InvalidInputError("email or lead_id is required", field=f"{prefix}email", code="required")
    if lead_id is not None and (isinstance(lead_id, bool) or not isinstance(lead_id, int) or lead_id < 1):
        raise InvalidInputError("expected a lead id (a positive whole number)", field=f"{prefix}lead_id")
    if lead_id is not None and lead_id > LARGEST_ID:  # no row can have it, and the drivers refuse to bind it
        raise NotFoundError(f"no lead with id {lead_id}", field=f"{prefix}lead_id", code="unknown_lead")
    key = item.get("id")
    if key is not None:
        if isinstance(key, bool) or not isinstance(key, (str, int)) or not str(key).strip() or len(str(key)) > 200:
            raise InvalidInputError("expected an id (text, at most 200 characters)", field=f"{prefix}id")
        key = str(key).strip()
    return EventInput(
        type=kind.strip(),
        at=parse_past_moment(item.get("at"), f"{prefix}at", now),
        properties=_object(item.get("properties"), f"{prefix}properties"),
        key=key,
        email=normalize_email(email, f"{prefix}email") if email is not None else None,
        lead_id=lead_id,
    )
