"""`autofunnel.testing`: the README's example is run as written, and the harness's own promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autofunnel.testing import FunnelTest, funnel_test  # noqa: F401  (the fixture `-p autofunnel.testing` offers)

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    """The first Python block of the README's "Testing a funnel" section, verbatim."""
    text = README.read_text()
    section = text.split("\n## Testing a funnel\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Testing a funnel section has a python example"
    return match.group(1)


def test_the_readme_example_passes_as_written(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(project_dir)
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_") and callable(value)]
    assert len(tests) == 1
    tests[0]()


def test_the_readme_example_fails_when_the_purchase_does_not_stop_the_reminder(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example can fail: without the purchase, the lead stays in the lead stage and gets the reminder."""
    code = readme_example().replace('t.event(ann, "purchase", product="mini-course")', "pass")
    monkeypatch.chdir(project_dir)
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    test = next(value for name, value in namespace.items() if name.startswith("test_"))
    with pytest.raises(AssertionError):
        test()  # type: ignore[operator]


def test_only_the_confirmation_goes_before_confirming_and_the_holdout_gets_nothing(project_dir: Path) -> None:
    with FunnelTest(project_dir) as t:
        pending = t.subscribe("pending@example.com", "yoga", held_out=False)
        held = t.subscribe("held@example.com", "yoga", held_out=True, confirm=True)
        t.advance("2d")
        assert t.templates(pending) == ["confirm", "confirm"], "the confirmation and its one reminder, nothing else"
        assert [e.kind for e in t.outbox if e.lead == "pending@example.com"] == ["confirm", "confirm"]
        assert t.templates(held) == []
        assert t.lead(pending)["status"] == "pending"
        t.confirm(pending)
        assert t.templates(pending) == ["confirm", "confirm", "welcome"]
        assert t.lead(held)["status"] == "active"


def test_an_email_says_what_sent_it_and_where_its_links_lead(project_dir: Path) -> None:
    with FunnelTest(project_dir) as t:
        ann = t.subscribe("ann@example.com", "yoga", first_name="Ann", held_out=False, confirm=True)
        (welcome,) = t.outbox
        assert (welcome.funnel, welcome.stage, welcome.step, welcome.template, welcome.kind) == ("yoga", "lead", "welcome", "welcome", "email")
        assert welcome.lead == "ann@example.com" and welcome.to == "ann@example.com"
        assert "Ann" in welcome.subject or "Ann" in welcome.html
        assert welcome.text.strip()
        assert all(link.startswith("http") for link in welcome.links)
        assert any("/t/c/" in href for href in welcome.tracked_links)
        t.click(welcome, welcome.links[0])
        assert any(event["type"] == "clicked" for event in t.lead(ann)["events"])
        assert t.report("yoga", **{"from": "2026-01-01", "to": "2026-01-31"})["stages"][0]["reached"] == 1


def test_a_seed_makes_the_holdout_repeatable(project_dir: Path) -> None:
    def drawn(seed: int) -> list[bool]:
        with FunnelTest(project_dir, seed=seed) as t:
            leads = [t.subscribe(f"l{i}@example.com", "yoga", confirm=True) for i in range(40)]
            return [t.lead(lead)["funnels"][0]["holdout"] for lead in leads]

    first = drawn(7)
    assert first == drawn(7)
    assert any(first) and not all(first)
    assert first != drawn(8)


def test_the_clock_moves_only_forward(project_dir: Path) -> None:
    with FunnelTest(project_dir) as t:
        with pytest.raises(ValueError):
            t.advance_to(t.now.replace(year=2025))


@pytest.fixture
def in_project(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("AUTOFUNNEL_PROJECT_DIR", raising=False)
    monkeypatch.chdir(project_dir)
    return project_dir


def test_the_fixture_tests_the_project_in_the_current_folder(in_project: Path, funnel_test: FunnelTest) -> None:
    assert funnel_test.project_dir.resolve() == in_project.resolve()
    funnel_test.subscribe("ann@example.com", "yoga", held_out=False, confirm=True)
    assert funnel_test.templates() == ["welcome"]
    assert not (in_project / "autofunnel.db").exists() and not (in_project / "outbox").exists()
