"""Signed tokens for every public URL (SPEC.md, "HTTP API": the public routes).

A token is an itsdangerous URL-safe signature over a compact JSON payload, with
one salt per *purpose*, so a token made for an open pixel can never be replayed
as an unsubscribe or a click redirect. Signatures are HMAC-SHA-256 (itsdangerous
defaults to SHA-1; DESIGN.md, "Known traps").

Keys come from `Settings.secret_key`, a tuple with the newest key FIRST: the
first key signs, every key verifies, so keys can be rotated by putting a new one
in front and dropping the oldest later. (itsdangerous wants the newest key
LAST in its list; this module turns the order round.)

Payloads should be small lists of ints and strings (`[delivery_id, url]`), which
keeps the links in emails short. The tokens carry no timestamp: an unsubscribe
link must keep working for as long as the email exists, and a click or an open
is checked against the delivery row it names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import zlib
from collections.abc import Sequence
from typing import Any, Final

from itsdangerous import BadData, Signer, URLSafeSerializer
from itsdangerous.encoding import base64_decode, base64_encode

from autofunnel.errors import BadToken, ConfigError

PURPOSES: Final = ("click", "open", "unsubscribe", "confirm", "offer", "countdown")
"""Every kind of public link; each signs with its own salt."""


_TOKEN_TEXT = re.compile(r"^\.?[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")  # a leading dot: zlib-compressed payload
# A SHA-256 signature is 32 bytes: 43 base64 characters, the last of which carries
# two unused bits that must be zero. Checking that makes the text of a valid token
# unique (base64 decoding alone would accept four spellings of the last character).
_SIGNATURE_LENGTH = 43
_CANONICAL_LAST = frozenset("AEIMQUYcgkosw048")
# itsdangerous tries zlib on every payload (~18 µs); a short one never shrinks.
_COMPRESS_FROM = 120


class Tokens:
    """Signs and checks the tokens of public links.

    >>> tokens = Tokens(["a-new-secret-key-0123", "an-old-secret-key-0123"])
    >>> token = tokens.sign("click", [42, "https://shop.example/"])
    >>> tokens.load("click", token)
    [42, 'https://shop.example/']
    """

    __slots__ = ("_serializers", "_signers", "_verify_keys")

    def __init__(self, secret_keys: Sequence[str]) -> None:
        if isinstance(secret_keys, (str, bytes)):
            raise TypeError("secret_keys must be a sequence of keys, newest first, not one string")
        keys = [key for key in secret_keys if key]
        if not keys:
            raise ConfigError("AUTOFUNNEL_SECRET_KEY is not set; links in emails cannot be signed")
        newest_last = list(reversed(keys))
        self._serializers = {
            purpose: URLSafeSerializer(
                newest_last,
                salt=f"autofunnel.{purpose}",
                signer_kwargs={"digest_method": hashlib.sha256},
            )
            for purpose in PURPOSES
        }
        self._signers: dict[str, Signer] = {purpose: serializer.make_signer() for purpose, serializer in self._serializers.items()}
        # itsdangerous derives each key (a SHA-256 over salt and secret) on every check; derived
        # once here, a check is one HMAC per key, newest first, as its own verification goes.
        self._verify_keys: dict[str, tuple[bytes, ...]] = {
            purpose: tuple(signer.derive_key(key) for key in reversed(signer.secret_keys)) for purpose, signer in self._signers.items()
        }

    def _serializer(self, purpose: str) -> URLSafeSerializer:
        try:
            return self._serializers[purpose]
        except KeyError:
            raise ValueError(f"unknown token purpose {purpose!r}; expected one of {', '.join(PURPOSES)}") from None

    def sign(self, purpose: str, payload: dict[str, Any] | list[Any]) -> str:
        """A URL-safe token for `payload` (JSON-serialisable), valid only for `purpose`."""
        if not isinstance(payload, (dict, list)):
            raise TypeError(f"a token payload is a dict or a list, not {type(payload).__name__}")
        try:
            signer = self._signers[purpose]
        except KeyError:
            raise ValueError(f"unknown token purpose {purpose!r}; expected one of {', '.join(PURPOSES)}") from None
        # The same bytes as URLSafeSerializer.dumps, which `load` reads, without its
        # per-call Signer and zlib attempt (35 µs a token down to ~8 µs).
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(data) >= _COMPRESS_FROM:
            compressed = zlib.compress(data)
            if len(compressed) < len(data) - 1:
                return signer.sign(b"." + base64_encode(compressed)).decode("ascii")
        return signer.sign(base64_encode(data)).decode("ascii")

    def load(self, purpose: str, token: str) -> Any:
        """The payload signed into `token` for `purpose`; `BadToken` for anything else."""
        serializer = self._serializer(purpose)
        if not isinstance(token, str) or len(token) > 4096 or not _TOKEN_TEXT.match(token):
            raise BadToken()
        signature = token.rpartition(".")[2]
        if len(signature) != _SIGNATURE_LENGTH or signature[-1] not in _CANONICAL_LAST:
            raise BadToken()
        value = token[: -len(signature) - 1].encode("ascii")
        try:
            expected = base64_decode(signature)
        except BadData:
            raise BadToken() from None
        if not any(hmac.compare_digest(hmac.digest(key, value, "sha256"), expected) for key in self._verify_keys[purpose]):
            raise BadToken()
        try:
            payload = serializer.load_payload(value)
        except BadData:
            raise BadToken() from None
        except (UnicodeError, ValueError):  # e.g. bytes that are not UTF-8 after a valid signature
            raise BadToken() from None
        if not isinstance(payload, (dict, list)):
            raise BadToken()
        return payload
