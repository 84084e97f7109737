"""Settings from `autofunnel.toml` and `AUTOFUNNEL_*` environment variables.

The file and the environment use the same names (lower-case in the file); the
environment wins, so one image can run anywhere with only variables changed.
A bad value stops the program with one line naming the key, because a seller
who mistypes a rate should read what to fix, not a traceback.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from autofunnel.errors import ConfigError

CONFIG_FILE = "autofunnel.toml"
ENV_PREFIX = "AUTOFUNNEL_"
BROKER_FOLDER = ".autofunnel-broker"


def _text(key: str, raw: Any) -> str:
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        raise ConfigError(f"{key}: expected text, got {raw!r}")
    return str(raw).strip()


def _optional_text(key: str, raw: Any) -> str | None:
    value = _text(key, raw)
    return value or None


def _bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{key}: expected true or false, got {raw!r}")


def _positive_number(key: str, raw: Any, unit: str) -> float:
    if isinstance(raw, bool):
        raise ConfigError(f"{key}: expected a number of {unit}, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number of {unit}, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{key}: must be greater than 0, got {raw!r}")
    return value


def _rate(key: str, raw: Any) -> float | None:
    if raw in ("", None):
        return None
    return _positive_number(key, raw, "emails per second")


def _seconds(key: str, raw: Any) -> float:
    return _positive_number(key, raw, "seconds")


def _days(key: str, raw: Any) -> float:
    return _positive_number(key, raw, "days")


def _hours_or_off(key: str, raw: Any) -> float:
    """A number of hours; 0 turns the thing off."""
    if raw in (0, "0", "0.0"):
        return 0.0
    return _positive_number(key, raw, "hours (0 for off)")


def _seconds_or_off(key: str, raw: Any) -> float:
    """A number of seconds; 0 turns the thing off."""
    if raw in (0, "0", "0.0"):
        return 0.0
    return _positive_number(key, raw, "seconds (0 for off)")


def _days_or_off(key: str, raw: Any) -> float:
    if raw in (0, "0", "0.0"):
        return 0.0
    return _positive_number(key, raw, "days (0 for off)")


def _rate_limit(key: str, raw: Any) -> str:
    from limits import parse_many

    value = _text(key, raw)
    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(f"{key}: expected a rate such as '10 per minute' or '5/minute;50/day', got {raw!r}") from None
    return value


def _broker_url(key: str, raw: Any) -> str | None:
    value = _optional_text(key, raw)
    if value is None:
        return None
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in {"redis", "rediss", "filesystem"}:
        raise ConfigError(f"{key}: expected redis://host:6379/0 or filesystem:///path/to/folder, got {raw!r}")
    return value


def _keys(key: str, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, list):
        items = [_text(key, item) for item in raw]
    else:
        items = _text(key, raw).split(",")
    keys = tuple(item.strip() for item in items if item.strip())
    for secret in keys:
        if len(secret) < 16:
            raise ConfigError(f"{key}: each secret key needs at least 16 characters")
    return keys


def _database_url(key: str, raw: Any) -> str:
    value = _text(key, raw)
    if "://" not in value:
        raise ConfigError(f"{key}: expected a URL such as sqlite:///autofunnel.db or postgresql://user:pass@host/db, got {raw!r}")
    return value


def _smtp_url(key: str, raw: Any) -> str:
    value = _text(key, raw)
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in {"smtp", "smtp+starttls", "smtps", "file"}:
        raise ConfigError(f"{key}: expected smtp://, smtp+starttls://, smtps:// or file:// URL, got {raw!r}")
    return value


def _base_url(key: str, raw: Any) -> str:
    value = _text(key, raw).rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {raw!r}")
    return value


def _timezone(key: str, raw: Any) -> str:
    value = _text(key, raw)
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}: expected an IANA timezone such as Europe/Berlin, got {raw!r}") from None
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the running system reads from its environment."""

    project_dir: Path = Path(".")
    database_url: str | None = None
    broker_url: str | None = None
    smtp_url: str = "file://./outbox"
    mail_from: str | None = None
    base_url: str = "http://localhost:8000"
    secret_key: tuple[str, ...] = ()
    send_rate: float | None = None
    delivery_lease: float = 60.0
    scheduler_interval: float = 1.0
    double_opt_in: bool = False
    track_opens: bool = False
    tracking_batch_seconds: float = 1.0
    """How long a web process gathers opens and clicks before writing them in one batch; 0: each in its request."""
    postal_address: str | None = None
    consent_text: str = "Yes, send me emails about this. I can unsubscribe at any time."
    confirm_token_days: float = 7.0
    confirm_reminder_hours: float = 24.0
    pending_erase_days: float = 30.0
    form_rate_limit: str = "10 per minute;100 per day"
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_key_file: str | None = None
    stripe_webhook_secret: str | None = None
    shopify_webhook_secret: str | None = None
    timezone: str = "UTC"
    """The seller's timezone: how the admin shows times."""
    postmark_webhook_token: str | None = None
    mailgun_webhook_signing_key: str | None = None
    sendgrid_webhook_public_key: str | None = None
    ses_topic_arn: str | None = None
    ses_confirm_subscriptions: bool = False
    ses_signing_cert_dir: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def resolved_database_url(self) -> str:
        """The database URL; SQLite by default, and relative SQLite paths inside the project folder."""
        url = self.database_url or "sqlite:///autofunnel.db"
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:":
            path = Path(url[len(prefix):])
            if not path.is_absolute():
                return f"{prefix}{(self.project_dir / path).resolve()}"
        return url

    @property
    def resolved_broker_url(self) -> str:
        """The Celery broker; by default a folder of message files next to the project, no server."""
        if self.broker_url:
            return self.broker_url
        return f"filesystem://{(self.project_dir / BROKER_FOLDER).resolve()}"


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "database_url": _database_url,
    "broker_url": _broker_url,
    "smtp_url": _smtp_url,
    "mail_from": _optional_text,
    "base_url": _base_url,
    "secret_key": _keys,
    "send_rate": _rate,
    "delivery_lease": _seconds,
    "scheduler_interval": _seconds,
    "double_opt_in": _bool,
    "track_opens": _bool,
    "tracking_batch_seconds": _seconds_or_off,
    "postal_address": _optional_text,
    "consent_text": _text,
    "confirm_token_days": _days,
    "confirm_reminder_hours": _hours_or_off,
    "pending_erase_days": _days_or_off,
    "form_rate_limit": _rate_limit,
    "dkim_domain": _optional_text,
    "dkim_selector": _optional_text,
    "dkim_key_file": _optional_text,
    "stripe_webhook_secret": _optional_text,
    "shopify_webhook_secret": _optional_text,
    "timezone": _timezone,
    "postmark_webhook_token": _optional_text,
    "mailgun_webhook_signing_key": _optional_text,
    "sendgrid_webhook_public_key": _optional_text,
    "ses_topic_arn": _optional_text,
    "ses_confirm_subscriptions": _bool,
    "ses_signing_cert_dir": _optional_text,
}

SETTING_NAMES: tuple[str, ...] = ("project_dir", *_PARSERS)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = [key for key in data if key not in _PARSERS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(_PARSERS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}: unknown key {key!r}{hint}")
    return data


def load_settings(
    project_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the project's `autofunnel.toml`, then let `AUTOFUNNEL_*` variables override it."""
    env = os.environ if environ is None else environ
    directory = Path(project_dir if project_dir is not None else env.get(f"{ENV_PREFIX}PROJECT_DIR", "."))
    file_values = _read_file(directory / CONFIG_FILE)
    values: dict[str, Any] = {"project_dir": directory}
    sources: dict[str, str] = {"project_dir": "default"}
    for name, parse in _PARSERS.items():
        env_name = f"{ENV_PREFIX}{name.upper()}"
        if env_name in env:
            values[name] = parse(env_name, env[env_name])
            sources[name] = "env"
        elif name in file_values:
            values[name] = parse(f"{CONFIG_FILE}: {name}", file_values[name])
            sources[name] = "file"
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known}, sources=sources)
