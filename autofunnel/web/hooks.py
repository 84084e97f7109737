"""`POST /hooks/<provider>`: shop and mail-relay webhooks, a thin shell over `receive_webhook`.

The raw bytes go to the service untouched, since every provider signs the bytes it
sent, not any re-serialised JSON. A refused signature is 400, a webhook without its
secret configured 503 (the provider keeps retrying, so nothing is lost once it is set), as is
one whose check needs what cannot be had now (SES's signing certificate),
an unknown provider 404; anything accepted, duplicated or ignored is 200.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from autofunnel.errors import HookNotConfigured, HookUnavailable, UnknownHook
from autofunnel.services.hooks import Request, receive_webhook
from autofunnel.web.api import runtime
from autofunnel.web.errors import error_response

hooks = Blueprint("hooks", __name__, url_prefix="/hooks")


@hooks.errorhandler(HookNotConfigured)
def _not_configured(exc: HookNotConfigured) -> Response:
    return error_response(503, "not_configured", str(exc), exc.setting)


@hooks.errorhandler(HookUnavailable)
def _unavailable(exc: HookUnavailable) -> Response:
    return error_response(503, "unavailable", str(exc), exc.setting)


@hooks.errorhandler(UnknownHook)
def _unknown(exc: UnknownHook) -> Response:
    return error_response(404, "unknown_webhook", str(exc))


@hooks.post("/<name>")
def receive(name: str) -> Response:
    raw = request.get_data(cache=False)
    result = receive_webhook(runtime(), name, Request(raw, request.headers, request.args))
    body = {"accepted": result.accepted, "duplicates": result.duplicates}
    if result.ignored is not None:
        body["ignored"] = result.ignored
    return jsonify(body)
