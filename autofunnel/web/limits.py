"""The one rate limiter of the web app (Flask-Limiter): per-IP limits on the public doors
(subscribe form, confirmation re-sends) and failed admin logins per IP and per account
(`web/admin/security.py`).

Counts live in Redis when the broker is Redis (so every web process shares
them), in memory otherwise (one process: `autofunnel run` with SQLite). Windows
move (`moving-window`): a burst at the turn of a fixed window cannot get twice
the limit, which matters for password guessing.
"""

from __future__ import annotations

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from autofunnel.config import Settings

limiter = Limiter(key_func=get_remote_address, default_limits=[], key_prefix="autofunnel", strategy="moving-window")


def init_limiter(app: Flask, settings: Settings) -> None:
    """Bind the limiter to `app`, storing counts where the broker is."""
    url = settings.broker_url or ""
    app.config["RATELIMIT_STORAGE_URI"] = url if url.startswith(("redis://", "rediss://")) else "memory://"
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    limiter.init_app(app)
