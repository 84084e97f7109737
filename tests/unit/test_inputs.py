"""Input checks: the fast path for plain addresses agrees with email-validator."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given
from hypothesis import strategies as st

from autofunnel.errors import InvalidInputError
from autofunnel.services.inputs import normalize_email, parse_event, parse_moment

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def reference(text: str) -> str | None:
    try:
        checked = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return (checked.ascii_email or checked.normalized).lower()


def ours(text: str) -> str | None:
    try:
        return normalize_email(text)
    except InvalidInputError:
        return None


@pytest.mark.parametrize("text", [
    "Ann@Example.com", "a.b+tag@sub.example.co.uk", "x@localhost", "x@foo.test", "x@foo.invalid", "a..b@x.com",
    ".a@x.com", "a.@x.com", "a@-x.com", "a@x-.com", "a@x.c", "a@x.123", "a@x", "a@b@c.com", "zoe@bücher.example",
    "zoë@example.com", "a" * 65 + "@x.com", "a@" + "b" * 64 + ".com", "user@[127.0.0.1]", "\"quoted\"@x.com", "a b@x.com", "0@00--0.AA", "a@ab--c.com",
])
def test_agrees_with_email_validator(text: str) -> None:
    assert ours(text) == reference(text)


@given(st.from_regex(r"[a-zA-Z0-9._%+-]{1,20}@[a-zA-Z0-9.-]{1,20}\.[a-zA-Z]{1,6}", fullmatch=True))
def test_agrees_on_generated_addresses(text: str) -> None:
    assert ours(text) == reference(text)


def test_moments_need_a_zone() -> None:
    assert parse_moment("2026-03-01T10:00:00Z", "at", NOW) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert parse_moment("2026-03-01T12:00:00+02:00", "at", NOW) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    with pytest.raises(InvalidInputError, match="has no timezone") as caught:
        parse_moment("2026-03-01T10:00:00", "at", NOW)
    assert caught.value.field == "at"


def test_event_fields_are_named() -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_event({"type": "x", "email": "a@b.com", "properties": [1]}, "[2].", NOW)
    assert caught.value.field == "[2].properties"
    with pytest.raises(InvalidInputError) as caught:
        parse_event({"type": "x", "email": "a@b.com", "colour": 1}, "", NOW)
    assert (caught.value.field, caught.value.code) == ("colour", "unknown_field")
