"""A small living shop for the admin's tests: leads from three channels moved through
the yoga funnel by the API and the real scheduler, an admin user, and a logged-in client.

Shared by the page tests (`test_admin.py`) and the browser tests (`browser/`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from autofunnel.clock import FixedClock
from autofunnel.services.credentials import create_api_key, create_user
from autofunnel.services.runtime import Runtime
from autofunnel.services.scheduler import run_tick
from autofunnel.web import create_app

NOW = datetime(2026, 3, 16, 10, 0, tzinfo=UTC)
"""A Monday inside the yoga funnel's send window; every lead entered in the 30 days before."""
ADMIN_EMAIL = "owner@shop.example"
ADMIN_PASSWORD = "correct horse battery"
CHANNELS = {"instagram": 6, "google": 4, "newsletter": 2}
"""Leads per channel; in each, the first half buy the mini-course and one of those the full course."""


@dataclass
class Site:
    app: Flask
    rt: Runtime
    clock: FixedClock
    api: dict[str, str]
    outbox: Path

    def api_post(self, path: str, body: Any) -> Any:
        response = self.app.test_client().post(path, json=body, headers=self.api)
        assert response.status_code in (200, 201, 202), response.get_data(as_text=True)
        return response.json

    def api_get(self, path: str, **params: str) -> Any:
        response = self.app.test_client().get(path, query_string=params, headers=self.api)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.json


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def build_site(project_dir: Path, runtime_factory: Any, outbox: Path, **settings: str) -> Site:
    """The shop with its history, as of `NOW`."""
    clock = FixedClock(NOW - timedelta(days=10))
    rt = runtime_factory(project_dir, f"file://{outbox}", clock, **{"tracking_batch_seconds": "0", **settings})  # clicks written in their request
    rt.rng = random.Random(0)  # its first draws are all above 0.1: no lead lands in the yoga holdout
    _, key = create_api_key(rt.db, clock, "shop")
    create_user(rt.db, clock, ADMIN_EMAIL, ADMIN_PASSWORD)
    site = Site(create_app(runtime=rt), rt, clock, {"Authorization": f"Bearer {key}"}, outbox)
    number = 0
    for channel, count in CHANNELS.items():
        for i in range(count):
            number += 1
            email = f"{channel}{i}@example.com"
            lead = site.api_post("/api/v1/subscribe", {"email": email, "funnel": "yoga", "first_name": f"Lead{number}",
                                                       "source": {"channel": channel}, "tags": ["yoga-fan"] if i == 0 else []})["lead_id"]
            site.api_post("/api/v1/events", {"type": "confirmed", "lead_id": lead})
    run_tick(rt)  # the welcome emails
    clock.advance(timedelta(days=2))
    purchases = []
    for channel, count in CHANNELS.items():
        for i in range(count // 2):
            purchases.append({"type": "purchase", "email": f"{channel}{i}@example.com", "id": f"order-{channel}-{i}",
                              "properties": {"product": "mini-course", "amount": 19, "currency": "EUR", "order_id": f"order-{channel}-{i}"}})
        purchases.append({"type": "purchase", "email": f"{channel}0@example.com", "id": f"order-{channel}-full",
                          "properties": {"product": "full-course", "amount": 199, "currency": "EUR", "order_id": f"order-{channel}-full"}})
    site.api_post("/api/v1/events", purchases)
    site.api_post("/api/v1/events", {"type": "refund", "email": f"{next(iter(CHANNELS))}0@example.com", "id": "refund-1",
                                      "properties": {"amount": 49.5, "currency": "EUR", "order_id": f"order-{next(iter(CHANNELS))}-full"}})
    clock.current = NOW
    run_tick(rt)  # the tripwire offers and thanks that fell due meanwhile
    return site


def log_in(client: FlaskClient, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD, **environ: str) -> Any:
    page = client.get("/admin/login", environ_base=environ)
    return client.post("/admin/login", data={"email": email, "password": password, "csrf_token": csrf_token(page.get_data(as_text=True))},
                       environ_base=environ)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, "the page has a form with a CSRF token"
    return found.group(1)
