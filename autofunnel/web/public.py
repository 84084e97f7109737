"""The public links in emails: no login, everything by signed token (SPEC.md, "HTTP API").

A bad or tampered token is a 404 page (`BadToken`, mapped in `web.errors`),
never a 500. What each link does is decided in `autofunnel.services.tracking`.
"""

from __future__ import annotations

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
from autofunnel.web.api import runtime
from autofunnel.web.errors import render_page

public = Blueprint("public", __name__)

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
"""A 1×1 transparent GIF."""


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

