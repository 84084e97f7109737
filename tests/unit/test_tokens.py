"""Signed tokens of public links: round trips, purpose isolation, key rotation, SHA-256."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer

from autofunnel.errors import AutofunnelError, ConfigError
from autofunnel.errors import BadToken
from autofunnel.tokens import PURPOSES, Tokens

NEW_KEY = "new-secret-key-0123456789abcdef"
OLD_KEY = "old-secret-key-0123456789abcdef"


@pytest.fixture
def tokens() -> Tokens:
    return Tokens([NEW_KEY, OLD_KEY])


@pytest.mark.parametrize("purpose", PURPOSES)
def test_every_purpose_round_trips_lists_and_dicts(tokens: Tokens, purpose: str) -> None:
    for payload in ([42, "https://shop.example/mini?coupon=EARLY&x=1"], {"d": 7, "o": "mini-course"}, []):
        assert tokens.load(purpose, tokens.sign(purpose, payload)) == payload


def test_the_purposes_are_the_public_routes() -> None:
    assert set(PURPOSES) == {"click", "open", "unsubscribe", "confirm", "offer", "countdown"}


@pytest.mark.parametrize("signed_for", PURPOSES)
def test_a_token_is_refused_for_any_other_purpose(tokens: Tokens, signed_for: str) -> None:
    token = tokens.sign(signed_for, [1])
    for other in PURPOSES:
        if other != signed_for:
            with pytest.raises(BadToken):
                tokens.load(other, token)


def test_tampered_cut_and_garbage_tokens_are_bad(tokens: Tokens) -> None:
    token = tokens.sign("click", [5, "https://shop.example/"])
    payload, signature = token.rsplit(".", 1)
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    other_payload = tokens.sign("click", [6, "https://evil.example/"]).rsplit(".", 1)[0]
    for bad in (
        f"{payload}.{flipped}",
        f"{other_payload}.{signature}",
        token[:-3],
        token[3:],
        payload,
        "",
        ".",
        "not-a-token",
        "x" * 5000,
        token + "=",
        token + "==",
        " " + token,
        token.replace(".", ".."),
    ):
        with pytest.raises(BadToken):
            tokens.load("click", bad)
    with pytest.raises(BadToken):
        tokens.load("click", None)  # type: ignore[arg-type]


def test_each_valid_token_has_exactly_one_spelling(tokens: Tokens) -> None:
    """base64 would also accept the signature's last character with its unused bits set."""
    token = tokens.sign("click", [5, "https://shop.example/"])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    accepted = []
    for character in alphabet:
        try:
            tokens.load("click", token[:-1] + character)
        except BadToken:
            continue
        accepted.append(character)
    assert accepted == [token[-1]]


def test_a_valid_signature_over_a_non_json_or_scalar_payload_is_still_bad() -> None:
    """Only dict and list payloads come out of `load`, whatever else was signed with the key."""
    raw = URLSafeSerializer([NEW_KEY], salt="autofunnel.click", signer_kwargs={"digest_method": hashlib.sha256})
    with pytest.raises(BadToken):
        Tokens([NEW_KEY]).load("click", raw.dumps("just a string"))


def test_the_first_key_signs_and_every_key_verifies() -> None:
    old_only = Tokens([OLD_KEY])
    rotated = Tokens([NEW_KEY, OLD_KEY])
    new_only = Tokens([NEW_KEY])

    from_before_rotation = old_only.sign("unsubscribe", [9])
    assert rotated.load("unsubscribe", from_before_rotation) == [9]

    after_rotation = rotated.sign("unsubscribe", [10])
    assert new_only.load("unsubscribe", after_rotation) == [10]
    with pytest.raises(BadToken):
        old_only.load("unsubscribe", after_rotation)

    with pytest.raises(BadToken):
        Tokens(["a-third-secret-key-0123456789"]).load("unsubscribe", after_rotation)


def test_signatures_are_hmac_sha256_not_itsdangerous_default_sha1(tokens: Tokens) -> None:
    token = tokens.sign("open", [1])
    signature = token.rsplit(".", 1)[1]
    assert len(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))) == 32  # SHA-1 would be 20

    sha1_made = URLSafeSerializer([NEW_KEY], salt="autofunnel.open").dumps([1])
    with pytest.raises(BadToken):
        tokens.load("open", sha1_made)


def test_tokens_are_itsdangerous_tokens(tokens: Tokens) -> None:
    """The fast signing path writes exactly what itsdangerous writes, and itsdangerous reads it."""
    reference = URLSafeSerializer([OLD_KEY, NEW_KEY], salt="autofunnel.click", signer_kwargs={"digest_method": hashlib.sha256})
    short = [42, "https://shop.example/mini?coupon=EARLY"]
    assert tokens.sign("click", short) == reference.dumps(short)
    long = [42, "https://shop.example/" + "category/yoga-mats/" * 12 + "?utm_source=newsletter&utm_medium=email"]
    token = tokens.sign("click", long)
    assert token.startswith(".")  # long payloads are compressed, as itsdangerous would
    assert reference.loads(token) == long
    assert tokens.load("click", token) == long
    unicode = {"name": "Zoë 🧘", "n": [1, 2.5, None, True]}
    assert tokens.sign("click", unicode) == reference.dumps(unicode)


def test_tokens_stay_short(tokens: Tokens) -> None:
    payload = [1234567, "https://shop.example/mini?coupon=EARLY"]
    token = tokens.sign("click", payload)
    compact = '[1234567,"https://shop.example/mini?coupon=EARLY"]'
    # the payload as compact JSON in unpadded base64, a dot, a 43-character SHA-256 signature
    assert len(token) <= -(-len(compact) * 4 // 3) + 1 + 43, token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_unknown_purposes_and_payload_types_are_programming_errors(tokens: Tokens) -> None:
    with pytest.raises(ValueError, match="unknown token purpose"):
        tokens.sign("download", [1])
    with pytest.raises(ValueError, match="unknown token purpose"):
        tokens.load("download", tokens.sign("click", [1]))
    with pytest.raises(TypeError):
        tokens.sign("click", "text")  # type: ignore[arg-type]


def test_keys_are_required_and_must_be_a_sequence() -> None:
    with pytest.raises(ConfigError, match="AUTOFUNNEL_SECRET_KEY"):
        Tokens([])
    with pytest.raises(TypeError):
        Tokens(NEW_KEY)


def test_bad_token_is_an_autofunnel_error_with_a_default_message() -> None:
    error = BadToken()
    assert isinstance(error, AutofunnelError)
    assert "not valid" in str(error)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(payload=st.lists(json_values, max_size=5) | st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_any_json_payload_round_trips(payload: list[object] | dict[str, object]) -> None:
    tokens = Tokens([NEW_KEY])
    token = tokens.sign("confirm", payload)
    assert "/" not in token and "+" not in token and "=" not in token
    assert tokens.load("confirm", token) == payload
