"""`autofunnel forecast` over a real funnel's history: the report's figures turned into what-if ones."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from autofunnel.cli import main
from autofunnel.clock import FixedClock
from autofunnel.errors import InvalidInputError
from autofunnel.services.events import record_events
from autofunnel.services.forecast import ForecastQuery, funnel_forecast, parse_change, parse_traffic
from autofunnel.services.inputs import parse_events, parse_subscribe
from autofunnel.services.leads import subscribe

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def history(runtime_factory: Any, project_dir: Path, tmp_path: Path) -> Any:
    """Ten days of 4 new leads a day; every other lead buys the mini-course a day later, one in four of those the course."""
    clock = FixedClock(START)
    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", clock)
    for day in range(10):
        clock.current = START + timedelta(days=day)
        for n in range(4):
            email = f"d{day}n{n}@example.com"
            subscribe(rt, parse_subscribe({"email": email, "funnel": "yoga"}, clock.now()), consent={"via": "test"})
    for day in range(10):
        clock.current = START + timedelta(days=day + 1)
        for n in (0, 2):
            email = f"d{day}n{n}@example.com"
            items = [{"type": "purchase", "email": email, "id": f"o{day}{n}", "properties": {"product": "mini-course", "amount": 19, "currency": "EUR"}}]
            if n == 0 and day % 2 == 0:
                items.append({"type": "purchase", "email": email, "id": f"c{day}{n}", "properties": {"product": "full-course", "amount": 99, "currency": "EUR"}})
            record_events(rt, parse_events(items, clock.now()))
    clock.current = START + timedelta(days=11)
    return rt


def test_today_traffic_and_a_stage_change(history: Any) -> None:
    result = funnel_forecast(history, ForecastQuery("yoga", horizon_days=30, traffic=2.0, changes=(parse_change("customer=+0.1"),)))
    today, what_if = result["scenarios"]
    assert result["observed"] == {"from": "2026-03-01", "to": "2026-03-12", "days": 12, "leads": 40}
    assert result["customer_stage"] == "tripwire"
    assert today["stages"][0]["leads"] == pytest.approx(40 / 12 * 30)
    assert [row["conversion_from_previous"] for row in today["stages"][1:3]] == [pytest.approx(0.5), pytest.approx(0.25)]
    assert what_if["stages"][0]["leads"] == pytest.approx(2 * today["stages"][0]["leads"])
    assert what_if["stages"][1]["leads"] == pytest.approx(2 * today["stages"][1]["leads"])
    assert what_if["stages"][2]["conversion_from_previous"] == pytest.approx(0.35)
    assert what_if["customers"]["expected"] == pytest.approx(2 * today["customers"]["expected"])
    revenue_per_customer = (20 * 19 + 5 * 99) / 20
    assert today["revenue"]["expected"] == pytest.approx(today["customers"]["expected"] * revenue_per_customer)
    for scenario in (today, what_if):
        for row in scenario["stages"]:
            assert row["low"] <= row["leads"] <= row["high"]


def test_the_goal_names_the_stage_and_the_rate(history: Any) -> None:
    result = funnel_forecast(history, ForecastQuery("yoga", horizon_days=30, goal_customers=60))
    expected = result["scenarios"][0]["customers"]["expected"]
    assert expected < 60
    best = result["goal"]["best"]
    assert best["stage"] == "tripwire" and best["from"] == pytest.approx(0.5) and best["to"] == pytest.approx(0.5 * 60 / expected)
    assert [o["to"] for o in result["goal"]["options"][1:]] == [None, None]


def test_the_command_prints_a_table_and_the_same_json(history: Any, monkeypatch: pytest.MonkeyPatch, project_dir: Path) -> None:
    monkeypatch.setenv("AUTOFUNNEL_PROJECT_DIR", str(project_dir))
    monkeypatch.setenv("AUTOFUNNEL_DATABASE_URL", history.settings.database_url)
    runner = CliRunner()
    table = runner.invoke(main, ["forecast", "yoga", "--traffic", "×2", "--stage", "tripwire=+0.05", "--goal", "customers=1000000"])
    assert table.exit_code == 0, table.output
    assert "what if (traffic ×2, tripwire +5.0%)" in table.output and "reach tripwire" in table.output
    assert "no single stage improvement reaches it" in table.output
    as_json = runner.invoke(main, ["forecast", "yoga", "--traffic", "x2", "--json"])
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.output)
    assert body["scenarios"][1]["traffic"] == 2.0


def test_bad_options_name_themselves() -> None:
    assert parse_traffic("×2") == parse_traffic("x2") == parse_traffic("2") == 2.0
    assert parse_change("customer=-2%")[1].delta == pytest.approx(-0.02)
    for bad in ("customer=+", "customer", "customer=2"):
        with pytest.raises(InvalidInputError):
            parse_change(bad)
    with pytest.raises(InvalidInputError):
        parse_traffic("double")
