"""`autofunnel simulate` and `autofunnel demo`, run as a user runs them (click's runner, in-process)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from autofunnel.cli import main
from autofunnel.config import load_settings
from autofunnel.store.db import Database
from autofunnel.store.models import Delivery, Enrollment, Event, Lead, Spend


def simulate(project: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["--project-dir", str(project), "simulate", "yoga", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def without_timing(run: dict) -> dict:
    return {key: value for key, value in run.items() if key not in ("seconds", "lead_days_per_s")}


def test_a_seed_gives_the_same_run_and_another_seed_another(project_dir: Path) -> None:
    first = simulate(project_dir, "--leads", "25", "--days", "8", "--seed", "3")
    assert without_timing(first) == without_timing(simulate(project_dir, "--leads", "25", "--days", "8", "--seed", "3"))
    assert without_timing(first) != without_timing(simulate(project_dir, "--leads", "25", "--days", "8", "--seed", "4"))
    assert first["lead_days_per_s"] > 0
    assert first["rates"]["source"] == "default"
    assert len(first["days_run"]) == 8
    assert sum(day["sent"].get("welcome", 0) for day in first["days_run"]) > 0
    assert first["days_run"][-1]["stages"]["lead"] + first["days_run"][-1]["stages"]["tripwire"] <= 25
    assert first["report"]["stages"][0]["reached"] == 25
    assert not (project_dir / "autofunnel.db").exists(), "simulate touches no real database"
    assert not (project_dir / "outbox").exists(), "simulate sends nothing"


def test_given_rates_drive_the_conversions(project_dir: Path) -> None:
    run = simulate(project_dir, "--leads", "20", "--days", "10", "--rates", "tripwire=1,customer=0,confirm=1")
    assert run["rates"]["source"] == "given"
    stages = {row["stage"]: row["reached"] for row in run["report"]["stages"]}
    assert stages["tripwire"] == 20 and stages["customer"] == 0


def test_bad_rates_are_refused_with_their_name(project_dir: Path) -> None:
    result = CliRunner().invoke(main, ["--project-dir", str(project_dir), "simulate", "yoga", "--rates", "nosuch=0.2"])
    assert result.exit_code == 2 and "nosuch" in result.output


def test_an_event_stream_is_replayed_instead_of_random_behaviour(project_dir: Path, tmp_path: Path) -> None:
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join([
        '{"type": "subscribe", "email": "ann@example.com", "after": "10h", "held_out": false, "confirm": true}',
        '{"type": "subscribe", "email": "ben@example.com", "after": "10h", "held_out": false, "confirm": true}',
        '# a comment line',
        '{"type": "purchase", "email": "ann@example.com", "after": "1d12h", "properties": {"product": "mini-course", "amount": 19}}',
    ]) + "\n")
    run = simulate(project_dir, "--events", str(stream), "--days", "4")
    assert run["rates"]["source"] == "events" and run["leads"] == 2
    sent = {}
    for day in run["days_run"]:
        for template, count in day["sent"].items():
            sent[template] = sent.get(template, 0) + count
    assert sent["welcome"] == 2 and sent["tripwire-offer"] == 2
    assert sent["tripwire-reminder"] == 1, "ann's purchase stopped her reminder; ben got his"
    assert sent["thanks-mini"] == 1


def test_observed_rates_come_from_the_projects_history(project_dir: Path) -> None:
    from autofunnel.services.simulate import observed_rates
    from autofunnel.testing import FunnelTest

    database = project_dir / "autofunnel.db"
    with FunnelTest(project_dir, database=database, start=datetime.now(UTC) - timedelta(days=5)) as t:
        for index in range(10):
            lead = t.subscribe(f"o{index}@example.com", "yoga", held_out=False, confirm=True)
            if index < 4:
                t.event(lead, "purchase", product="mini-course")
    settings = load_settings(project_dir, environ={})
    rates = observed_rates(settings, __import__("autofunnel.services.project", fromlist=["x"]).load_project(project_dir).flows["yoga"], datetime.now(UTC).date())
    assert rates is not None and rates.source == "observed"
    assert rates.stages["tripwire"] == pytest.approx(0.4)
    run = simulate(project_dir, "--leads", "5", "--days", "2")
    assert run["rates"]["source"] == "observed" and run["rates"]["stages"]["tripwire"] == pytest.approx(0.4)


def test_demo_fills_a_project_with_history_and_sends_nothing(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", str(target), "--leads", "60"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "demo ready" in result.output
    assert (target / "funnels" / "yoga.yml").is_file()
    assert not (target / "outbox").exists() or not any((target / "outbox").iterdir()), "nothing is emailed"
    db = Database.from_url(f"sqlite:///{target / 'autofunnel.db'}")
    try:
        with db.read() as session:
            assert session.scalar(select(func.count()).select_from(Lead)) == 60
            assert session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "sent")) > 60
            assert session.scalar(select(func.count()).select_from(Event).where(Event.type == "purchase")) > 0
            assert session.scalar(select(func.count()).select_from(Spend)) >= 90 * 3
            kept = set(session.scalars(select(Lead.email).where(Lead.status != "erased")))
            assert kept <= {f"demo{i}@example.com" for i in range(1, 61)}, "leads who never confirmed are erased after 30 days"
            now = datetime.now(UTC)
            overdue = session.scalar(select(func.count()).select_from(Enrollment).where(Enrollment.status == "active", Enrollment.due_at < now - timedelta(minutes=5)))
            assert overdue == 0, "nothing left due in the past for `run` to send in a burst"
            assert session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "queued")) == 0
    finally:
        db.dispose()
    report = CliRunner().invoke(main, ["--project-dir", str(target), "report", "yoga", "--by", "channel", "--from",
                                       (datetime.now(UTC) - timedelta(days=91)).date().isoformat(), "--format", "json"], catch_exceptions=False)
    data = json.loads(report.output)
    assert data["stages"][0]["reached"] == 60
    assert any(step["sent"] for step in data["steps"])
    assert {group["value"] for group in data["groups"]} >= {"instagram", "google"}
    since = (datetime.now(UTC) - timedelta(days=91)).date().isoformat()
    for by, expected in (("owner", {"maria@yoga.example", "tom@yoga.example", "lee@yoga.example", None}), ("field:segment", {"beginner", "returning"})):
        split = json.loads(CliRunner().invoke(main, ["--project-dir", str(target), "report", "yoga", "--by", by, "--from", since, "--format", "json"], catch_exceptions=False).output)
        assert {group["value"] for group in split["groups"]} >= expected, f"the demo's leads have owners and segments to split by ({by})"
        assert sum(group["stages"][0]["reached"] for group in split["groups"]) == 60
