"""Who may open the admin, and how hard guessing a password is.

Flask-Login keeps the session, Flask-WTF checks a CSRF token on every admin
form, and failed logins are counted per IP and per account with `limits` (the
library Flask-Limiter is built on), in Redis when the broker is Redis so every
web process counts together, else in this process. Only failures count: a
seller who types the right password is never locked out by their own visits.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from flask import Flask, Response, request
from flask_login import LoginManager, UserMixin
from flask_wtf.csrf import CSRFProtect
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from autofunnel.services.credentials import UserInfo, get_user
from autofunnel.services.runtime import Runtime

FAILED_LOGINS_PER_IP = parse("20/10 minutes")
FAILED_LOGINS_PER_ACCOUNT = parse("5/10 minutes")
ADMIN_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


class AdminUser(UserMixin):
    def __init__(self, info: UserInfo) -> None:
        self.info = info
        self.id = str(info.id)


@dataclass
class LoginThrottle:
    """Failed logins per IP and per account, in a shared store."""

    limiter: MovingWindowRateLimiter

    def _checks(self, ip: str, email: str) -> list[tuple[RateLimitItem, str]]:
        return [(FAILED_LOGINS_PER_IP, f"ip:{ip}"), (FAILED_LOGINS_PER_ACCOUNT, f"account:{email.strip().lower()}")]

    def blocked(self, ip: str, email: str) -> bool:
        return any(not self.limiter.test(item, "af-login", key) for item, key in self._checks(ip, email))

    def failed(self, ip: str, email: str) -> None:
        for item, key in self._checks(ip, email):
            self.limiter.hit(item, "af-login", key)


def session_secret(key: str) -> str:
    """A session-signing key derived from a link-signing secret, so nothing more needs configuring,
    but never equal to it: a session cookie is no valid link token, and no link token a session."""
    return hmac.new(key.encode(), b"autofunnel admin session", hashlib.sha256).hexdigest()


def install_security(app: Flask, rt: Runtime) -> None:
    """Sessions, CSRF, the login throttle and the admin's security headers on `app`."""
    first, *older = rt.secret_keys
    app.config["SECRET_KEY"] = session_secret(first)
    app.config["SECRET_KEY_FALLBACKS"] = [session_secret(key) for key in older]  # AUTOFUNNEL_SECRET_KEY rotation
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_SECURE"] = rt.settings.base_url.startswith("https://")
    app.config["REMEMBER_COOKIE_HTTPONLY"] = True
    app.config["REMEMBER_COOKIE_SAMESITE"] = "Lax"
    app.config["REMEMBER_COOKIE_SECURE"] = app.config["SESSION_COOKIE_SECURE"]
    app.config["WTF_CSRF_TIME_LIMIT"] = None  # valid as long as the session: a form left open over lunch still posts

    manager = LoginManager(app)
    manager.login_view = "admin.login"
    manager.login_message = ""

    @manager.user_loader
    def load_user(user_id: str) -> AdminUser | None:
        info = get_user(rt.db, int(user_id)) if user_id.isdigit() else None
        return AdminUser(info) if info is not None else None

    # CSRF is checked on the admin's own requests only (see `check_admin_csrf`), not app-wide:
    # the API, the public links and any webhook or form endpoint another blueprint adds stay
    # exempt by construction instead of by a list someone must remember to extend.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    csrf = CSRFProtect(app)

    broker = rt.settings.broker_url or ""
    storage = storage_from_string(broker if broker.startswith(("redis://", "rediss://")) else "memory://")
    app.extensions["autofunnel_login_throttle"] = LoginThrottle(MovingWindowRateLimiter(storage))

    @app.before_request
    def check_admin_csrf() -> None:
        if request.blueprint == "admin" and request.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
            csrf.protect()

    @app.after_request
    def admin_headers(response: Response) -> Response:
        if request.path.startswith("/admin"):
            response.headers.setdefault("Content-Security-Policy", ADMIN_CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "same-origin"
            response.headers.setdefault("Cache-Control", "no-store")
        return response
