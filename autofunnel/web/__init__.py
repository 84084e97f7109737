"""The web shell: the JSON API, `/healthz`, the public links in emails and the admin.

`create_app()` with no arguments reads the settings from the environment
(`AUTOFUNNEL_*` and the project's `autofunnel.toml`), which is how gunicorn runs
it: `gunicorn 'autofunnel.web:create_app()'`. Tests pass a ready `Runtime`
(their own database and clock) instead.
"""

from __future__ import annotations

import io

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

from autofunnel.config import Settings, load_settings
from autofunnel.services.runtime import Runtime
from autofunnel.web.admin import install_admin
from autofunnel.web.api import api, health
from autofunnel.web.errors import register_error_handlers
from autofunnel.web.hooks import hooks
from autofunnel.web.forms import forms
from autofunnel.web.limits import init_limiter
from autofunnel.web.public import public, tracking_fast_path

MAX_BODY = 5 * 1024 * 1024
"""Bigger request bodies are refused with 413 (1000 events fit with room to spare)."""


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    """The Flask app over `runtime`, or over a runtime opened from `settings` (default: the environment).

    Opening refuses a project with errors and a database that is not migrated,
    so a misconfigured web process stops at start, not at the first request.
    """
    if runtime is None:
        runtime = Runtime.open(settings if settings is not None else load_settings())
    app = Flask("autofunnel", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["autofunnel"] = runtime
    app.before_request(_bounded_chunked_body)
    register_error_handlers(app)
    app.before_request(lambda: None if runtime.reload_project() else None)  # at most one look at the files a second
    app.register_blueprint(api)
    app.register_blueprint(health)
    app.register_blueprint(public)
    app.register_blueprint(hooks)
    app.register_blueprint(forms)
    init_limiter(app, runtime.settings)
    install_admin(app, runtime)
    app.wsgi_app = tracking_fast_path(app.wsgi_app, runtime)  # type: ignore[method-assign]
    return app


def _bounded_chunked_body() -> None:
    """A chunked body (no Content-Length) over MAX_BODY is a 413, as a sized one is.

    Werkzeug cuts such a body at the limit without a word, which turned an
    oversized batch into a confusing `bad_json`; here it is read up to one byte
    past the limit and, if it fits, handed on as a body of known length.
    """
    if "chunked" not in request.environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return
    data = request.environ["wsgi.input"].read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise RequestEntityTooLarge()
    request.environ.update({"wsgi.input": io.BytesIO(data), "CONTENT_LENGTH": str(len(data))})
    del request.environ["HTTP_TRANSFER_ENCODING"]
