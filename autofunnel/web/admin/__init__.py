"""The seller's admin at /admin (SPEC.md "Admin"): server-rendered pages over the API's services.

`install_admin` wires what the pages need onto the app: the session secret
(derived from the project's signing secret, never the secret itself), the
session cookie's flags, Flask-Login, Flask-WTF's CSRF check (applied to the
admin's own forms only, so the API, the webhooks and the one-click
unsubscribe stay exempt by construction) and Flask-Limiter for the login.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from flask import Flask, redirect, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from werkzeug.wrappers import Response

from autofunnel.services.credentials import get_user
from autofunnel.services.runtime import Runtime, project_secret
from autofunnel.web.admin.auth import AdminUser
from autofunnel.web.admin.views import admin

LOGIN_LIMIT_PER_IP = "20 per 10 minutes"
LOGIN_LIMIT_PER_ACCOUNT = "10 per 10 minutes"


def session_secret(rt: Runtime) -> str:
    """A key for the session cookie derived from the link-signing secret, so one secret rules both
    and a leaked session key cannot sign unsubscribe or click links."""
    secret = rt.settings.secret_key[0] if rt.settings.secret_key else project_secret(Path(rt.settings.project_dir))
    return hmac.new(secret.encode("utf-8"), b"autofunnel.admin-session", hashlib.sha256).hexdigest()


def _limiter_storage(rt: Runtime) -> str:
    broker = rt.settings.broker_url or ""
    return broker if broker.startswith(("redis://", "rediss://")) else "memory://"


def install_admin(app: Flask, rt: Runtime) -> None:
    """Register the admin blueprint and the session, CSRF, login and throttling it relies on."""
    app.config["SECRET_KEY"] = session_secret(rt)
    secure = rt.settings.base_url.startswith("https://")
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=secure,
        REMEMBER_COOKIE_HTTPONLY=True, REMEMBER_COOKIE_SAMESITE="Lax", REMEMBER_COOKIE_SECURE=secure,
        WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None, WTF_CSRF_SSL_STRICT=secure,
    )
    app.config.setdefault("AUTOFUNNEL_LOGIN_LIMITS", (LOGIN_LIMIT_PER_IP, LOGIN_LIMIT_PER_ACCOUNT))
    CSRFProtect(app)
    login = LoginManager(app)
    login.login_view = "admin.login"
    login.login_message = "Log in to see the admin."
    login.session_protection = "basic"

    @login.user_loader
    def load_user(user_id: str) -> AdminUser | None:
        info = get_user(rt.db, int(user_id)) if user_id.isdigit() else None
        return AdminUser(info) if info is not None else None

    app.extensions["autofunnel_login_limiter"] = Limiter(
        get_remote_address, app=app, storage_uri=_limiter_storage(rt), key_prefix="autofunnel-admin", headers_enabled=False,
    )
    app.register_blueprint(admin)

    @app.get("/")
    def root() -> Response:
        return redirect(url_for("admin.home"))
