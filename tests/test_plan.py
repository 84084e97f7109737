"""`validate --plan`: the leads a file edit moves, counted, then moved exactly so by the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from smtp_sink import SmtpSink

from autofunnel.cli import main
from autofunnel.clock import FixedClock
from autofunnel.services.events import record_events
from autofunnel.services.inputs import parse_events, parse_subscribe
from autofunnel.services.leads import lead_view, subscribe
from autofunnel.services.plan import PlanRow, edit_plan
from autofunnel.services.project import validate_project
from autofunnel.services.scheduler import run_tick

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, inside the send window


def join(rt: Any, *emails: str) -> None:
    for email in emails:
        subscribe(rt, parse_subscribe({"email": email, "funnel": "yoga"}, rt.clock.now()), consent={"via": "test"})
    record_events(rt, parse_events([{"type": "confirmed", "email": email} for email in emails], rt.clock.now()))


def step_of(rt: Any, email: str) -> str:
    return next(e["step"] for e in lead_view(rt, email)["enrollments"] if e["flow"] == "yoga" and e["status"] == "active")


def edit(project: Path) -> None:
    """Remove both `wait: 1d` of the lead stage and rename the reminder email's template."""
    yoga = project / "funnels" / "yoga.yml"
    text = yoga.read_text()
    text = text.replace("      - wait: 1d                  # durations: 30m, 12h, 2d, 1w\n", "")
    text = text.replace("      - wait: 1d\n      - send: tripwire-reminder\n", "      - send: tripwire-nudge\n")
    assert "tripwire-nudge" in text and "wait: 1d " not in text
    yoga.write_text(text)
    folder = project / "templates" / "yoga"
    (folder / "tripwire-reminder.html").rename(folder / "tripwire-nudge.html")
    reminder_txt = folder / "tripwire-reminder.txt"
    if reminder_txt.exists():
        reminder_txt.rename(folder / "tripwire-nudge.txt")


def test_the_plan_counts_the_waiting_leads_and_the_engine_then_moves_them_so(
    runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FixedClock(T0)
    rt = runtime_factory(project_dir, smtp_sink.url(), clock)
    join(rt, "b1@example.com")
    run_tick(rt)
    clock.advance(timedelta(days=1, minutes=1))
    run_tick(rt)
    join(rt, "a1@example.com", "a2@example.com")
    run_tick(rt)
    assert step_of(rt, "b1@example.com") == "wait-after-tripwire-offer"
    assert step_of(rt, "a1@example.com") == step_of(rt, "a2@example.com") == "wait-after-welcome"
    assert edit_plan(rt.db, rt.project.flows) == []

    edit(project_dir)
    edited = validate_project(project_dir)
    assert edited.ok, [str(p) for p in edited.problems]
    assert edit_plan(rt.db, edited.flows) == [
        PlanRow("yoga", "lead", "wait-after-tripwire-offer", 1, "step removed or renamed: continue with 'wait-until-tripwire' at their due time"),
        PlanRow("yoga", "lead", "wait-after-welcome", 2, "step removed or renamed: continue with 'tripwire-offer' at their due time"),
    ]
    for key, value in {"AUTOFUNNEL_PROJECT_DIR": str(project_dir), "AUTOFUNNEL_DATABASE_URL": rt.settings.database_url}.items():
        monkeypatch.setenv(key, value)
    printed = CliRunner().invoke(main, ["validate", "--plan", str(project_dir)])
    assert printed.exit_code == 0, printed.output
    assert "yoga/lead/wait-after-welcome: 2 lead(s) — step removed or renamed: continue with 'tripwire-offer' at their due time" in printed.output

    clock.advance(timedelta(days=1))
    after = runtime_factory(project_dir, smtp_sink.url(), clock)
    run_tick(after)
    since = clock.now().isoformat().replace("+00:00", "Z")
    decided = {
        email: list(dict.fromkeys(item["step"] for item in lead_view(after, email)["timeline"] if item["at"] >= since and item["step"]))
        for email in ("a1@example.com", "a2@example.com", "b1@example.com")
    }
    for email in ("a1@example.com", "a2@example.com"):
        assert decided[email][:2] == ["tripwire-offer", "tripwire-nudge"], decided  # no wait between them any more
    assert decided["b1@example.com"] == ["wait-until-tripwire"], decided  # the renamed reminder is passed over
    assert step_of(after, "b1@example.com") == "wait-until-tripwire"
    assert edit_plan(after.db, after.project.flows) == []


def test_a_running_process_takes_up_a_valid_edit_and_keeps_the_last_good_one_otherwise(
    runtime_factory: Any, project_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", FixedClock(T0))
    rt.project_watch.every = 0.0
    assert rt.reload_project() is False  # nothing changed
    edit(project_dir)
    assert rt.reload_project() is True
    steps = [step.id for step in rt.flow("yoga").steps_of("lead")]
    assert "tripwire-nudge" in steps and "wait-after-welcome" not in steps

    yoga = project_dir / "funnels" / "yoga.yml"
    good = yoga.read_text()
    yoga.write_text(good.replace("wait: {until_deadline: tripwire}", "wait: {until_deadline: nowhere}"))
    with caplog.at_level("ERROR", logger="autofunnel.reload"):
        assert rt.reload_project() is False
        assert rt.reload_project() is False  # the same broken files are logged once
    assert [step.id for step in rt.flow("yoga").steps_of("lead")] == steps
    refused = [record.getMessage() for record in caplog.records if record.name == "autofunnel.reload"]
    assert len(refused) == 1 and "still running the last good version" in refused[0] and "nowhere" in refused[0]
    yoga.write_text(good.replace("send: tripwire-nudge", "send: tripwire-nudge\n        id: nudge"))
    assert rt.reload_project() is True
    assert "nudge" in [step.id for step in rt.flow("yoga").steps_of("lead")]


def test_the_web_app_looks_at_the_files_before_a_request(runtime_factory: Any, project_dir: Path, tmp_path: Path) -> None:
    from autofunnel.web import create_app

    rt = runtime_factory(project_dir, f"file://{tmp_path / 'outbox'}", FixedClock(T0))
    client = create_app(runtime=rt).test_client()
    rt.project_watch.every = 0.0
    edit(project_dir)
    assert client.get("/healthz").status_code in (200, 503)
    assert "tripwire-nudge" in [step.id for step in rt.flow("yoga").steps_of("lead")]


def test_a_step_changed_under_its_id_is_in_the_plan_and_its_leads_keep_their_time(
    runtime_factory: Any, project_dir: Path, smtp_sink: SmtpSink,
) -> None:
    clock = FixedClock(T0)
    rt = runtime_factory(project_dir, smtp_sink.url(), clock)
    join(rt, "a1@example.com", "a2@example.com")
    run_tick(rt)
    assert step_of(rt, "a1@example.com") == step_of(rt, "a2@example.com") == "wait-after-welcome"

    yoga = project_dir / "funnels" / "yoga.yml"
    longer = yoga.read_text().replace("      - wait: 1d                  # durations", "      - wait: 2d                  # durations")
    assert longer != yoga.read_text()
    yoga.write_text(longer)
    edited = validate_project(project_dir)
    assert edited.ok, [str(p) for p in edited.problems]
    assert edit_plan(rt.db, edited.flows) == [PlanRow(
        "yoga", "lead", "wait-after-welcome", 2,
        "step changed from “wait 1d” to “wait 2d”: they wake at the time set when they started waiting, then go on as now written; later arrivals get the new step",
    )]

    after = runtime_factory(project_dir, smtp_sink.url(), clock)
    join(after, "late@example.com")
    run_tick(after)
    clock.advance(timedelta(days=1, minutes=1))
    run_tick(after)
    assert step_of(after, "a1@example.com") == step_of(after, "a2@example.com") == "wait-after-tripwire-offer"  # woke after 1d
    assert step_of(after, "late@example.com") == "wait-after-welcome"  # waits the new 2d
    assert [row.leads for row in edit_plan(after.db, after.project.flows)] == []

    # Back to 1d: only the lead scheduled with the 2d version waits on a changed step; the
    # leads of the 1d version at other steps are counted apart from it, and not listed.
    yoga.write_text(longer.replace("      - wait: 2d                  # durations", "      - wait: 1d                  # durations"))
    back = validate_project(project_dir)
    assert back.ok, [str(p) for p in back.problems]
    assert edit_plan(after.db, back.flows) == [PlanRow(
        "yoga", "lead", "wait-after-welcome", 1,
        "step changed from “wait 2d” to “wait 1d”: they wake at the time set when they started waiting, then go on as now written; later arrivals get the new step",
    )]
