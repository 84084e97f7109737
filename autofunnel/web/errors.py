"""Every error the web answers, in one of two shapes.

Under `/api/` and at `/healthz`: JSON, `{"error": {"code", "message", "field"}}`
(SPEC.md, "HTTP API"). Everywhere else (the public links people click): a small
HTML page. Errors autofunnel raises on purpose map to a status here, once, so
views never catch them; anything unexpected is logged with its traceback and
answered `500 internal` with no detail.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template_string, request
from werkzeug.exceptions import HTTPException

from autofunnel.errors import (
    AutofunnelError,
    BadToken,
    DatabaseUnavailableError,
    InvalidInputError,
    NotFoundError,
    NotMigratedError,
)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }}</title>
</head>
<body style="margin:0;padding:48px 16px;background:#f4f1ec;font-family:Arial,Helvetica,sans-serif;color:#2b2b2b;">
<main style="max-width:480px;margin:0 auto;padding:32px;background:#fff;border-radius:6px;">
<h1 style="font-size:22px;margin:0 0 16px 0;">{{ title }}</h1>
<p style="font-size:16px;line-height:1.5;margin:0 0 16px 0;">{{ message }}</p>
{% if action %}
<form method="post" action="{{ action }}" style="margin:0;">
<button type="submit" style="padding:12px 24px;font-size:16px;border:0;border-radius:4px;background:#2f6f5e;color:#fff;cursor:pointer;">{{ button }}</button>
</form>
{% endif %}
</main>
</body>
</html>
"""


class ApiError(Exception):
    """An error a view raises to answer with a given status, code and field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def render_page(title: str, message: str, *, status: int = 200, action: str | None = None, button: str | None = None) -> Response:
    """A tiny self-contained HTML page (no external assets), autoescaped by Jinja."""
    html = render_template_string(PAGE, title=title, message=message, action=action, button=button)
    return Response(html, status=status, mimetype="text/html")


def wants_json() -> bool:
    path = request.path
    return path == "/api" or path.startswith(("/api/", "/hooks/")) or path == "/healthz"


def error_response(status: int, code: str, message: str, field: str | None = None, headers: Any = None) -> Response:
    if wants_json():
        response = jsonify({"error": {"code": code, "message": message, "field": field}})
        response.status_code = status
    elif status == 404:
        response = render_page("Link not found", "This link is not valid any more, or it was changed on the way. Nothing was done.", status=404)
    elif status >= 500:
        response = render_page("Something went wrong", "Please try again in a moment.", status=status)
    else:
        response = render_page("Request not accepted", message, status=status)
    for name, value in headers or ():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _autofunnel_error(exc: AutofunnelError) -> Response:
    if isinstance(exc, BadToken):
        return error_response(404, "bad_token", str(exc))
    if isinstance(exc, NotFoundError):
        return error_response(404, exc.code, str(exc), exc.field)
    if isinstance(exc, InvalidInputError):
        return error_response(400, exc.code, str(exc), exc.field)
    if isinstance(exc, (DatabaseUnavailableError, NotMigratedError)):
        current_app.logger.error("database unavailable: %s", exc)
        return error_response(503, "unavailable", "the database is not available; try again shortly")
    return _unexpected(exc)


def _http_error(exc: HTTPException) -> Response:
    if exc.response is not None:  # an answer made for the occasion (the admin login's own 429 page)
        return exc.response  # type: ignore[return-value]
    status = exc.code or 500
    code = HTTP_CODES.get(status, "http_error")
    message = (exc.description or exc.name) if status < 500 else "internal error"
    return error_response(status, code, str(message), headers=exc.get_headers())


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.field)


def _unexpected(exc: BaseException) -> Response:
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal", "internal error; it has been logged")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(AutofunnelError, _autofunnel_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
