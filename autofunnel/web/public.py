"""The public links in emails: no login, everything by signed token (SPEC.md, "HTTP API").

A bad or tampered token is a 404 page (`BadToken`, mapped in `web.errors`),
never a 500. What each link does is decided in `autofunnel.services.tracking`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint, Response, redirect, request, url_for
from werkzeug.urls import iri_to_uri

from autofunnel.services.tracking import (
    countdown_image,
    offer_target,
    track_click,
    track_open,
    unsubscribe,
    unsubscribe_preview,
)
from autofunnel.services.runtime import Runtime
from autofunnel.web.api import runtime
from autofunnel.web.errors import render_page

public = Blueprint("public", __name__)

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
"""A 1×1 transparent GIF."""

_PIXEL_HEADERS = (("Content-Type", "image/gif"), ("Content-Length", str(len(PIXEL))), ("Cache-Control", "no-store"))
"""What `_gif(PIXEL)` answers with, written out for the fast path."""


def _user_agent() -> str | None:
    return request.headers.get("User-Agent")


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def _gif(data: bytes) -> Response:
    return _no_store(Response(data, mimetype="image/gif"))


def _redirect(url: str) -> Response:
    # A header is Latin-1: a URL with other characters goes out percent-encoded, meaning the same.
    return _no_store(redirect(url if url.isascii() else iri_to_uri(url), 302))


@public.get("/t/o/<token>")
def open_pixel(token: str) -> Response:
    track_open(runtime(), token, _user_agent(), method=request.method)
    return _gif(PIXEL)


@public.get("/t/c/<token>")
def click(token: str) -> Response:
    return _redirect(track_click(runtime(), token, _user_agent(), method=request.method))


def tracking_fast_path(app: Any, rt: Runtime) -> Any:
    """WSGI middleware answering a good open pixel or click before Flask sees it.

    The same service calls and the same answers as the two views above, without
    Flask's request context, URL matching and before/after hooks, which were most
    of an open's cost once its write was gathered into batches (services/write_behind.py).
    Anything else — another path or method, a bad token, any error — goes to the
    Flask app, which answers it as it always did (a bad token: the 404 page).
    """

    def fast(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        method: str = environ.get("REQUEST_METHOD", "")
        if path.startswith(("/t/o/", "/t/c/")) and method in ("GET", "HEAD") and "/" not in path[5:]:
            agent = environ.get("HTTP_USER_AGENT")
            try:
                if path[3] == "o":
                    track_open(rt, path[5:], agent, method=method)
                    start_response("200 OK", list(_PIXEL_HEADERS))
                    return _ThenWrite([] if method == "HEAD" else [PIXEL], rt)
                answer = _redirect(track_click(rt, path[5:], agent, method=method))
            except Exception:  # nothing was recorded: Flask answers it the one way it answers errors
                return app(environ, start_response)  # type: ignore[no-any-return]
            return _ThenWrite(answer(environ, start_response), rt)
        return app(environ, start_response)  # type: ignore[no-any-return]

    return fast


class _ThenWrite:
    """A WSGI answer that, once sent (the server calls `close()`), writes the gathered opens
    and clicks if a write is due: the reader has the pixel or the redirect by then."""

    def __init__(self, body: Iterable[bytes], rt: Runtime) -> None:
        self._body = body
        self._rt = rt

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        self._rt.engagements.flush_if_due()


@public.get("/o/<token>")
def offer(token: str) -> Response:
    return _redirect(offer_target(runtime(), token))


@public.get("/countdown/<token>.gif")
def countdown(token: str) -> Response:
    return _gif(countdown_image(runtime(), token))


@public.get("/u/<token>")
def unsubscribe_page(token: str) -> Response:
    """Shows whom the link unsubscribes and a button; changes nothing (scanners GET every link)."""
    preview = unsubscribe_preview(runtime(), token)
    if preview.unsubscribed:
        return _no_store(render_page("You are unsubscribed", f"{preview.masked_email} gets no more emails from us."))
    return _no_store(render_page(
        "Unsubscribe?",
        f"{preview.masked_email} will get no more emails from us.",
        action=url_for("public.unsubscribe_post", token=token),
        button="Unsubscribe",
    ))


# No CSRF token on this POST, on purpose: the signed token in the URL is the
# authority, and a mail client's RFC 8058 one-click POST carries no session or
# form token. The admin's CSRF guard (Flask-WTF's CSRFProtect) exempts this whole
# blueprint (`web/admin/security.py`), or one-click unsubscribes would fail with 400
# and mailbox providers would penalise the sender.
@public.post("/u/<token>")
def unsubscribe_post(token: str) -> Response:
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    result = unsubscribe(runtime(), token, one_click=one_click)
    if one_click:
        return _no_store(Response("unsubscribed\n", mimetype="text/plain"))
    return _no_store(render_page("You are unsubscribed", f"{result.masked_email} gets no more emails from us."))

