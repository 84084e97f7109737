"""Who may open the admin, and how hard guessing a password is.

Flask-Login keeps the session, Flask-WTF checks a CSRF token on every admin
form, and failed logins are counted per IP and per account by the app's one
Flask-Limiter (`web/limits.py`), in Redis when the broker is Redis so every web
process counts together, else in this process. Only failures count (a 401): a
seller who types the right password is never locked out by their own visits.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, make_response, render_template, request
from flask_limiter import RequestLimit
from flask_login import LoginManager, UserMixin
from flask_wtf.csrf import CSRFProtect

from autofunnel.services.credentials import UserInfo, get_user
from autofunnel.services.runtime import Runtime
from autofunnel.web.limits import limiter

FAILED_LOGINS_PER_IP = "20 per 10 minutes"
FAILED_LOGINS_PER_ACCOUNT = "5 per 10 minutes"
F = TypeVar("F", bound=Callable[..., Any])
ADMIN_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


class AdminUser(UserMixin):
    def __init__(self, info: UserInfo) -> None:
        self.info = info
        self.id = str(info.id)


def _ip() -> str:
    return f"ip:{request.remote_addr or 'unknown'}"


def _account() -> str:
    return f"account:{request.form.get('email', '').strip().lower()}"


def _failed(response: Response) -> bool:
    return response.status_code == 401


def _too_many(_: RequestLimit) -> Response:
    page = render_template("admin/login.html", email=request.form.get("email", ""),
                           error="Too many failed attempts. Wait a few minutes and try again.")
    return make_response(page, 429)


def throttle_failed_logins(view: F) -> F:
    """A login POST is refused (429, the login page) once its IP or its account has too many
    recent failures; only a failed attempt (401) counts."""
    for limit, key, scope in ((FAILED_LOGINS_PER_ACCOUNT, _account, "admin-login-account"), (FAILED_LOGINS_PER_IP, _ip, "admin-login-ip")):
        view = limiter.limit(limit, key_func=key, scope=scope, methods=["POST"], deduct_when=_failed, on_breach=_too_many)(view)
    return view


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
