"""API keys and admin users.

Secrets are shown once and kept only as hashes: an API key as its sha256 (keys
are long and random, so a fast hash is enough and lets a request find its key
by index), a password with werkzeug's salted, slow hash. What leaves this
module is a frozen record, never an ORM row or a hash.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from autofunnel.clock import Clock
from autofunnel.errors import DuplicateError, InvalidInputError, NotFoundError
from autofunnel.store.db import Database
from autofunnel.store.models import ApiKey, User

KEY_PREFIX = "af_"
PREFIX_LENGTH = 12
MIN_PASSWORD_LENGTH = 10
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""`last_used_at` is refreshed at most this often, so checking a key on every API
request does not turn every request into a database write."""


@cache
def _unknown_user_hash() -> str:
    return generate_password_hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: ApiKey) -> ApiKeyInfo:
        return cls(row.id, row.name, row.prefix, row.created_at, row.last_used_at, row.revoked_at)


@dataclass(frozen=True)
class UserInfo:
    id: int
    email: str
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def from_row(cls, row: User) -> UserInfo:
        return cls(row.id, row.email, row.created_at, row.last_login_at)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(db: Database, clock: Clock, name: str = "default") -> tuple[ApiKeyInfo, str]:
    """A new key and its record; the key itself is returned here and never again."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInputError("an API key name needs 1 to 100 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with db.transaction() as session:
        row = ApiKey(name=name, prefix=key[:PREFIX_LENGTH], key_hash=hash_api_key(key), created_at=clock.now())
        session.add(row)
        session.flush()
        return ApiKeyInfo.from_row(row), key


def verify_api_key(db: Database, clock: Clock, key: str) -> ApiKeyInfo | None:
    """The key's record if it is known and not revoked, else None.

    Looked up by hash on a read-only session; the write that refreshes
    `last_used_at` happens only when the stored value is stale.
    """
    if not key.startswith(KEY_PREFIX):
        return None
    key_hash = hash_api_key(key)
    with db.read() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))).first()
        if row is None:
            return None
        info = ApiKeyInfo.from_row(row)
    now = clock.now()
    if info.last_used_at is not None and now - info.last_used_at < LAST_USED_RESOLUTION:
        return info
    with db.transaction() as session:
        session.execute(update(ApiKey).where(ApiKey.id == info.id).values(last_used_at=now))
    return ApiKeyInfo(info.id, info.name, info.prefix, info.created_at, now, info.revoked_at)


def list_api_keys(db: Database) -> list[ApiKeyInfo]:
    """All keys, newest first, as the admin lists them (by prefix, never in full)."""
    with db.read() as session:
        rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc()))
        return [ApiKeyInfo.from_row(row) for row in rows]


def revoke_api_key(db: Database, clock: Clock, key_id: int) -> bool:
    """Stop a key from working; False when no such live key exists."""
    with db.transaction() as session:
        revoked = session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=clock.now())
            .returning(ApiKey.id)
        ).first()
        return revoked is not None


def normalize_email(email: str) -> str:
    """The one spelling an address is stored and looked up under: trimmed, lower-case, valid."""
    candidate = email.strip().lower()
    try:
        return validate_email(candidate, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise InvalidInputError(f"{email.strip()!r} is not a valid email address: {exc}") from None


def create_user(db: Database, clock: Clock, email: str, password: str | None) -> tuple[UserInfo, str | None]:
    """An admin user. With no password one is generated and returned, to be shown once."""
    address = normalize_email(email)
    generated = None
    if password is None:
        password = generated = secrets.token_urlsafe(12)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    password_hash = generate_password_hash(password)
    try:
        with db.transaction() as session:
            if session.scalars(select(User.id).where(User.email == address)).first() is not None:
                raise DuplicateError(f"a user with email {address} already exists")
            row = User(email=address, password_hash=password_hash, created_at=clock.now())
            session.add(row)
            session.flush()
            return UserInfo.from_row(row), generated
    except IntegrityError:
        raise DuplicateError(f"a user with email {address} already exists") from None


def check_user_password(db: Database, clock: Clock, email: str, password: str) -> UserInfo | None:
    """The user if the password matches (recording the login), else None.

    An unknown address costs the same hash check as a wrong password, so timing
    does not tell which addresses have accounts.
    """
    address = email.strip().lower()
    with db.read() as session:
        row = session.scalars(select(User).where(User.email == address)).first()
        stored = row.password_hash if row is not None else _unknown_user_hash()
        user = UserInfo.from_row(row) if row is not None else None
    if not check_password_hash(stored, password) or user is None:
        return None
    now = clock.now()
    with db.transaction() as session:
        session.execute(update(User).where(User.id == user.id).values(last_login_at=now))
    return UserInfo(user.id, user.email, user.created_at, now)


def revoke_api_key_by_prefix(db: Database, clock: Clock, prefix: str) -> ApiKeyInfo:
    """Revoke the one live key whose shown prefix starts with `prefix` (as `apikey list` prints it).

    An ambiguous or unknown prefix revokes nothing and says so, rather than guessing.
    """
    prefix = prefix.strip().rstrip(".")  # pasted from `apikey list`, which prints `af_Xy12abCd...`
    if not prefix:
        raise InvalidInputError("give the key's prefix as `autofunnel apikey list` shows it, e.g. af_Xy12abCd")
    live = [key for key in list_api_keys(db) if key.revoked_at is None and key.prefix.startswith(prefix)]
    if not live:
        raise NotFoundError(f"no live API key with prefix {prefix!r}", field="prefix", code="unknown_key")
    if len(live) > 1:
        raise InvalidInputError(f"{len(live)} live keys start with {prefix!r}; give more of the prefix", field="prefix")
    revoke_api_key(db, clock, live[0].id)
    return live[0]


def get_user(db: Database, user_id: int) -> UserInfo | None:
    """The user behind an admin session, or None once the user was deleted."""
    with db.read() as session:
        row = session.get(User, user_id)
        return UserInfo.from_row(row) if row is not None else None


def list_users(db: Database) -> list[UserInfo]:
    with db.read() as session:
        return [UserInfo.from_row(row) for row in session.scalars(select(User).order_by(User.email))]


def delete_user(db: Database, email: str) -> UserInfo:
    """Remove an admin user; their open sessions stop working at their next request."""
    address = email.strip().lower()
    with db.transaction() as session:
        row = session.scalars(select(User).where(User.email == address)).first()
        if row is None:
            raise NotFoundError(f"no admin user {address!r}", field="email", code="unknown_user")
        info = UserInfo.from_row(row)
        session.delete(row)
        return info
