"""The JSON API (`/api/v1`, SPEC.md "HTTP API") and `/healthz`.

Each view parses its input, calls one service and renders the answer; errors
are raised and turned into `{"error": …}` by `autofunnel.web.errors`.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from importlib.resources import files
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import BadRequest

from autofunnel.services.credentials import verify_api_key
from autofunnel.services.events import record_events
from autofunnel.services.inputs import parse_events, parse_subscribe
from autofunnel.services.leads import erase_lead, lead_view, subscribe
from autofunnel.services.report import funnel_report, parse_report_query, seller_today
from autofunnel.services.runtime import Runtime
from autofunnel.services.status import health as system_health
from autofunnel.services.spend import add_spend, parse_spend
from autofunnel.web.errors import ApiError, error_response

log = logging.getLogger(__name__)

api = Blueprint("api", __name__, url_prefix="/api/v1")
health = Blueprint("health", __name__)


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["autofunnel"]
    return rt


def json_body() -> Any:
    """The decoded JSON body; 415 for another content type, 400 `bad_json` for broken JSON."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as JSON, with Content-Type: application/json")
    try:
        body = request.get_json()
    except BadRequest:
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None
    except RecursionError:  # "[[[[…" thousands deep: Python's parser gives up, which is no server error
        raise ApiError(400, "bad_json", "the body's JSON is nested too deep") from None
    if b"\\u0000" in request.get_data(cache=True) and _holds_nul(body):
        raise ApiError(400, "bad_json", "text may not contain the NUL character (\\u0000)")
    return body


def _holds_nul(value: Any) -> bool:
    """PostgreSQL stores no NUL in text or JSONB; refused here, it is a 400 rather than a 500.
    Only walked when the raw body has the escape at all, so big batches pay nothing."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


@api.before_request
def authenticate() -> Response | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    rt = runtime()
    info = verify_api_key(rt.db, rt.clock, key) if scheme.lower() == "bearer" and key else None
    if info is None:
        return error_response(
            401, "unauthorized", "a valid API key is required: Authorization: Bearer <key> (autofunnel apikey create)",
            headers=[("WWW-Authenticate", 'Bearer realm="autofunnel"')],
        )
    g.api_key = info
    return None


@api.post("/subscribe")
def subscribe_lead() -> tuple[Response, int]:
    rt = runtime()
    now = rt.clock.now()
    data = parse_subscribe(json_body(), now)
    consent = {
        "at": now.isoformat().replace("+00:00", "Z"),
        "via": "api",
        "api_key": {"name": g.api_key.name, "prefix": g.api_key.prefix},
        "ip": request.remote_addr,
    }
    result = subscribe(rt, data, consent=consent)
    return jsonify(lead_id=result.lead_id, status=result.status), 201 if result.created else 200


@api.post("/events")
def post_events() -> tuple[Response, int]:
    rt = runtime()
    result = record_events(rt, parse_events(json_body(), rt.clock.now()))
    return jsonify(accepted=result.accepted, duplicates=result.duplicates), 202


@api.get("/leads/<path:key>")
def get_lead(key: str) -> Response:
    return jsonify(lead_view(runtime(), key))


@api.delete("/leads/<path:key>")
def delete_lead(key: str) -> Response:
    return jsonify(erased=erase_lead(runtime(), key))


@api.get("/reports/<funnel>")
def get_report(funnel: str) -> Response:
    rt = runtime()
    query = parse_report_query(funnel, request.args.to_dict(), seller_today(rt))
    return jsonify(funnel_report(rt, query))


@api.post("/spend")
def post_spend() -> tuple[Response, int]:
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "send one object: {channel, amount, date, currency?}")
    unknown = sorted(set(body) - {"channel", "amount", "date", "currency"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field {unknown[0]!r}", unknown[0])
    entry = parse_spend(body.get("channel"), body.get("amount"), body.get("date"), body.get("currency"))
    total = add_spend(runtime(), entry)
    return jsonify(channel=entry.channel, date=entry.day.isoformat(), currency=entry.currency, amount=float(total)), 201


# The API's own description ------------------------------------------------------------


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document shipped beside this module; tests hold it to the routes and answers."""
    document: dict[str, Any] = json.loads(files("autofunnel.web").joinpath("openapi.json").read_text(encoding="utf-8"))
    return document


@health.get("/api/v1/openapi.json")
def openapi() -> Response:
    """Served without a key, like any published API description: it holds no data."""
    return jsonify(openapi_document())


# Health ---------------------------------------------------------------------------


@health.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 only when the database and the broker answer and due work is being done."""
    answer = system_health(runtime())
    body: dict[str, Any] = {
        "status": "ok" if answer.status_code == 200 else "unavailable",
        "database": answer.database,
        "broker": answer.broker,
        "work": answer.work,
    }
    if answer.failing is not None:
        body["error"] = {"code": "unavailable", "message": f"{answer.failing}: {body[answer.failing]}", "field": answer.failing}
    return jsonify(body), answer.status_code
