"""The JSON API and /healthz, through Flask's test client, on this run's real database.

Every error answer has the SPEC's shape, `{"error": {"code", "message", "field"}}`,
and a refused request leaves the database exactly as it was.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from autofunnel.clock import FixedClock
from autofunnel.services.credentials import create_api_key
from autofunnel.services.runtime import Runtime
from autofunnel.store.db import Database
from autofunnel.store.models import Enrollment, Event, Lead, StageEntry, TimelineEntry
from autofunnel.web import create_app

pytestmark = pytest.mark.db

TEST_BROKER_URL = os.environ.get("AUTOFUNNEL_TEST_BROKER_URL", "")
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, inside the yoga funnel's send window


@dataclass
class Web:
    app: Flask
    client: FlaskClient
    rt: Runtime
    clock: FixedClock
    headers: dict[str, str]

    def post(self, path: str, body: Any) -> Any:
        return self.client.post(path, json=body, headers=self.headers)

    def lead(self, key: str | int) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/leads/{key}", headers=self.headers)
        assert response.status_code == 200, response.json
        return response.json

    def count(self, model: type) -> int:
        with self.rt.db.read() as session:
            return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def web(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> Web:
    """The example project, a migrated database, a fixed clock, an API key and the app."""
    clock = FixedClock(START)
    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", clock, **({"broker_url": TEST_BROKER_URL} if TEST_BROKER_URL else {}))
    rt.rng = random.Random(0)  # its first draws are all above 0.1: no lead lands in the yoga holdout
    _, key = create_api_key(rt.db, clock, "shop")
    app = create_app(runtime=rt)
    return Web(app, app.test_client(), rt, clock, {"Authorization": f"Bearer {key}"})


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.json
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# Subscribe --------------------------------------------------------------------------


def test_subscribe_creates_then_answers_200_for_the_same_funnel(web: Web) -> None:
    first = web.post("/api/v1/subscribe", {"email": " Anna@Example.com ", "funnel": "yoga", "first_name": "Anna"})
    assert first.status_code == 201
    assert first.json == {"lead_id": first.json["lead_id"], "status": "pending"}  # yoga is double opt-in

    again = web.post("/api/v1/subscribe", {"email": "anna@example.com", "funnel": "yoga"})
    assert again.status_code == 200
    assert again.json == first.json

    lead = web.lead(first.json["lead_id"])
    assert lead["email"] == "anna@example.com"
    assert lead["consent"] == {
        "at": "2026-03-02T10:00:00Z", "via": "api", "api_key": {"name": "shop", "prefix": lead["consent"]["api_key"]["prefix"]},
        "ip": "127.0.0.1",
    }
    assert lead["consent"]["api_key"]["prefix"].startswith("af_")
    assert web.count(Lead) == 1 and web.count(StageEntry) == 1


def test_subscribe_to_an_unknown_funnel_is_404(web: Web) -> None:
    response = web.post("/api/v1/subscribe", {"email": "anna@example.com", "funnel": "pilates"})
    assert_error(response, 404, "unknown_funnel", "funnel")
    assert web.count(Lead) == 0


def test_subscribe_to_a_sequence_is_400(web: Web) -> None:
    response = web.post("/api/v1/subscribe", {"email": "anna@example.com", "funnel": "abandoned-cart"})
    assert_error(response, 400, "not_a_funnel", "funnel")
    assert web.count(Lead) == 0


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"email": "not-an-email"}, "invalid", "email"),
        ({"email": None}, "required", "email"),
        ({"funnel": ""}, "required", "funnel"),
        ({"timezone": "Mars/Olympus_Mons"}, "invalid", "timezone"),
        ({"at": "yesterday"}, "invalid", "at"),
        ({"at": "2026-03-01T09:30:00"}, "invalid", "at"),
        ({"colour": "blue"}, "unknown_field", "colour"),
        ({"fields": "vip"}, "invalid", "fields"),
        ({"tags": "vip"}, "invalid", "tags"),
        ({"source": {"utm_sauce": "x"}}, "unknown_field", "source.utm_sauce"),
    ],
)
def test_subscribe_refuses_bad_input_naming_the_field(web: Web, change: dict[str, Any], code: str, field: str) -> None:
    body = {"email": "anna@example.com", "funnel": "yoga", **change}
    assert_error(web.post("/api/v1/subscribe", body), 400, code, field)
    assert web.count(Lead) == 0 and web.count(Event) == 0


def test_malformed_json_wrong_type_and_non_object(web: Web) -> None:
    headers = {**web.headers, "Content-Type": "application/json"}
    assert_error(web.client.post("/api/v1/subscribe", data=b'{"email": ', headers=headers), 400, "bad_json")
    assert_error(web.client.post("/api/v1/events", data=b"", headers=headers), 400, "bad_json")
    assert_error(web.client.post("/api/v1/subscribe", data=b"email=a@b.example", headers={**web.headers, "Content-Type": "application/x-www-form-urlencoded"}), 415, "unsupported_media_type")
    assert_error(web.post("/api/v1/subscribe", ["anna@example.com"]), 400, "bad_json")
    assert web.count(Lead) == 0


# Authentication ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer af_not-a-real-key", "Basic dXNlcjpwYXNz", "Token af_x"],
)
def test_requests_without_a_valid_key_are_401(web: Web, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"email": "anna@example.com", "funnel": "yoga"}
    response = web.client.post("/api/v1/subscribe", json=body, headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(web.client.get("/api/v1/leads/anna@example.com", headers=headers), 401, "unauthorized")
    assert web.count(Lead) == 0


def test_a_changed_key_is_refused_and_the_scheme_is_case_insensitive(web: Web) -> None:
    wrong = web.headers["Authorization"][:-1] + ("A" if not web.headers["Authorization"].endswith("A") else "B")
    response = web.client.get("/api/v1/leads/1", headers={"Authorization": wrong})
    assert_error(response, 401, "unauthorized")
    lowercase = {"Authorization": "bearer " + web.headers["Authorization"].split(" ", 1)[1]}
    assert_error(web.client.get("/api/v1/leads/1", headers=lowercase), 404, "unknown_lead", "lead")


# Events -----------------------------------------------------------------------------


def test_events_single_list_and_idempotent_by_id(web: Web) -> None:
    single = web.post("/api/v1/events", {"type": "visited", "email": "bob@example.com", "id": "v-1"})
    assert single.status_code == 202
    assert single.json == {"accepted": 1, "duplicates": 0}

    batch = [
        {"type": "visited", "email": "bob@example.com", "id": "v-1"},
        {"type": "visited", "email": "bob@example.com", "id": "v-2", "properties": {"page": "/pricing"}},
        {"type": "visited", "email": "carol@example.com", "id": "v-3", "at": "2026-03-02T09:00:00+01:00"},
    ]
    listed = web.post("/api/v1/events", batch)
    assert listed.status_code == 202
    assert listed.json == {"accepted": 2, "duplicates": 1}
    again = web.post("/api/v1/events", batch)
    assert again.json == {"accepted": 0, "duplicates": 3}
    assert web.count(Event) == 3
    carol = web.lead("carol@example.com")
    assert carol["events"][0]["at"] == "2026-03-02T08:00:00Z"


def test_more_than_1000_events_are_refused(web: Web) -> None:
    batch = [{"type": "visited", "email": f"lead{i}@example.com"} for i in range(1001)]
    assert_error(web.post("/api/v1/events", batch), 400, "too_many")
    assert web.count(Lead) == 0 and web.count(Event) == 0


def test_one_bad_event_rejects_the_whole_batch(web: Web) -> None:
    web.post("/api/v1/subscribe", {"email": "anna@example.com", "funnel": "yoga"})
    before = {model: web.count(model) for model in (Lead, Event, TimelineEntry, Enrollment, StageEntry)}
    batch = [
        {"type": "confirmed", "email": "anna@example.com"},
        {"type": "purchase", "email": "anna@example.com", "properties": {"product": "mini-course"}},
        {"type": "visited", "email": "new@example.com"},
        {"type": "visited", "email": "new@example.com", "at": "last tuesday"},
    ]
    assert_error(web.post("/api/v1/events", batch), 400, "invalid", "[3].at")
    assert {model: web.count(model) for model in before} == before
    assert web.lead("anna@example.com")["status"] == "pending"


def test_an_unknown_lead_id_is_404_and_writes_nothing(web: Web) -> None:
    batch = [{"type": "visited", "email": "new@example.com"}, {"type": "visited", "lead_id": 999}]
    assert_error(web.post("/api/v1/events", batch), 404, "unknown_lead", "[1].lead_id")
    assert_error(web.post("/api/v1/events", {"type": "visited", "lead_id": 999}), 404, "unknown_lead", "lead_id")
    # Past a 64-bit id no row can exist, and SQLite's driver could not even bind it (schemathesis found a 500).
    too_big = [{"type": "visited", "email": "new@example.com"}, {"type": "visited", "lead_id": 9999999999999999999}]
    assert_error(web.post("/api/v1/events", too_big), 404, "unknown_lead", "[1].lead_id")
    assert web.count(Lead) == 0 and web.count(Event) == 0


def test_a_purchase_moves_the_lead_to_the_tripwire_stage(web: Web) -> None:
    lead_id = web.post("/api/v1/subscribe", {"email": "anna@example.com", "funnel": "yoga"}).json["lead_id"]
    assert web.post("/api/v1/events", {"type": "confirmed", "lead_id": lead_id}).status_code == 202
    purchase = {"type": "purchase", "lead_id": lead_id, "id": "order-1", "properties": {"product": "mini-course", "amount": 27, "currency": "EUR"}}
    assert web.post("/api/v1/events", purchase).json == {"accepted": 1, "duplicates": 0}

    lead = web.lead(lead_id)
    assert lead["status"] == "active"
    assert lead["funnels"][0]["funnel"] == "yoga"
    assert lead["funnels"][0]["stage"] == "tripwire"
    stage_decisions = [t for t in lead["timeline"] if t["decision"] == "stage"]
    assert any("entered stage 'tripwire'" in t["reason"] for t in stage_decisions)
    assert {e["type"] for e in lead["events"]} >= {"subscribed", "confirmed", "purchase"}


def test_an_unsubscribed_event_suppresses_the_lead(web: Web) -> None:
    web.post("/api/v1/subscribe", {"email": "anna@example.com", "funnel": "yoga"})
    assert web.post("/api/v1/events", {"type": "unsubscribed", "email": "ANNA@example.com"}).status_code == 202
    lead = web.lead("anna@example.com")
    assert lead["status"] == "unsubscribed"
    assert all(e["status"] != "active" for e in lead["enrollments"])


# Leads ------------------------------------------------------------------------------


def test_get_a_lead_by_email_in_any_case_and_by_id(web: Web) -> None:
    lead_id = web.post("/api/v1/subscribe", {"email": "anna@example.com", "funnel": "yoga"}).json["lead_id"]
    by_email = web.lead("ANNA@Example.COM")
    assert by_email["id"] == lead_id
    assert web.lead(lead_id) == by_email
    assert web.lead("anna%40example.com")["id"] == lead_id
    assert_error(web.client.get("/api/v1/leads/nobody@example.com", headers=web.headers), 404, "unknown_lead", "lead")
    assert_error(web.client.get("/api/v1/leads/424242", headers=web.headers), 404, "unknown_lead", "lead")


def test_delete_erases_the_personal_data(web: Web) -> None:
    lead_id = web.post("/api/v1/subscribe", {"email": "anna@example.com", "funnel": "yoga", "first_name": "Anna"}).json["lead_id"]
    response = web.client.delete("/api/v1/leads/anna@example.com", headers=web.headers)
    assert response.status_code == 200
    assert response.json == {"erased": lead_id}

    lead = web.lead(lead_id)
    assert lead["status"] == "erased"
    assert lead["email"] != "anna@example.com" and "anna" not in lead["email"]
    assert lead["first_name"] is None and lead["consent"] is None
    assert_error(web.client.get("/api/v1/leads/anna@example.com", headers=web.headers), 404, "unknown_lead", "lead")
    assert_error(web.client.delete("/api/v1/leads/anna@example.com", headers=web.headers), 404, "unknown_lead", "lead")
    assert web.count(StageEntry) == 1  # the anonymous counts stay


# Health -----------------------------------------------------------------------------


def test_healthz_answers_without_a_key(web: Web) -> None:
    response = web.client.get("/healthz")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ok"
    assert response.json["database"] == "ok"
    assert response.json["broker"] == "ok"
    assert response.json["work"] == "ok"


def _app_with(web: Web, **changes: Any) -> FlaskClient:
    db = changes.pop("db", web.rt.db)
    settings = dataclasses.replace(web.rt.settings, **changes)
    return create_app(runtime=Runtime(settings, db, web.rt.project, web.clock)).test_client()


def test_healthz_names_a_broker_that_does_not_answer(web: Web) -> None:
    response = _app_with(web, broker_url="redis://127.0.0.1:1/0").get("/healthz")
    assert response.status_code == 503
    body = response.json
    assert body["status"] == "unavailable" and body["database"] == "ok"
    assert body["broker"] != "ok"
    assert body["error"]["code"] == "unavailable" and body["error"]["field"] == "broker"


def test_healthz_names_a_database_that_does_not_answer(web: Web, tmp_path: Path) -> None:
    missing = Database.from_url(f"sqlite:///{tmp_path / 'no-such-folder' / 'autofunnel.db'}")
    try:
        response = _app_with(web, db=missing).get("/healthz")
    finally:
        missing.dispose()
    assert response.status_code == 503
    assert response.json["database"] == "unavailable"
    assert response.json["error"]["field"] == "database"


# HTTP errors ------------------------------------------------------------------------


def test_405_and_unknown_api_routes_answer_json(web: Web) -> None:
    response = web.client.get("/api/v1/subscribe", headers=web.headers)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(web.client.get("/api/v1/nothing-here", headers=web.headers), 404, "not_found")
    assert_error(web.client.get("/api/v2/leads/1"), 404, "not_found")
    page = web.client.get("/no-such-page")
    assert page.status_code == 404 and page.mimetype == "text/html"


def test_a_body_over_the_limit_is_413(web: Web) -> None:
    body = b'{"type": "x", "email": "a@example.com", "properties": {"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}}'
    response = web.client.post("/api/v1/events", data=body, headers={**web.headers, "Content-Type": "application/json"})
    assert_error(response, 413, "too_large")
    assert web.count(Event) == 0


def test_an_unexpected_error_is_500_without_details(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    def explode() -> str:
        raise RuntimeError("secret internals: password=hunter2")

    web.app.add_url_rule("/api/v1/explode", "explode", explode)
    response = web.client.get("/api/v1/explode", headers=web.headers)
    assert_error(response, 500, "internal")
    text = response.get_data(as_text=True)
    assert "hunter2" not in text and "Traceback" not in text
    assert any("hunter2" in (record.exc_text or "") or record.exc_info for record in caplog.records)


def test_a_report_day_off_the_calendar_is_refused_naming_its_field(web: Web) -> None:
    """schemathesis found `to=0001-01-01` a 500: the default period's 30 days back fell before year 1."""
    for params, field in (({"to": "0001-01-01"}, "to"), ({"from": "9999-12-31", "to": "9999-12-31"}, "to"), ({"from": "9999-12-31", "to": "2026-03-01"}, "from"), ({"from": "0001-01-01"}, "from")):
        response = web.client.get("/api/v1/reports/yoga", query_string=params, headers=web.headers)
        assert response.status_code == 400, (params, response.get_data(as_text=True))
        assert response.get_json()["error"]["field"] == field
