"""`autofunnel validate` on broken copies of the starter project: each mistake is
reported at its exact `file:line`, every problem in one run, errors exit 1 and
warnings exit 0."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from autofunnel.cli import main
from autofunnel.services.starter import init_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    init_project(Path("shop"))
    return Path("shop")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {path}"
    path.write_text(text.replace(old, new))


CONFIGURED = {
    "AUTOFUNNEL_BASE_URL": "https://shop.example", "AUTOFUNNEL_MAIL_FROM": "Shop <hello@shop.example>",
    "AUTOFUNNEL_POSTAL_ADDRESS": "1 Main St, Springfield",
}
"""A production-like setup, so only the files' own problems show (the setup's: tests/test_first_day.py)."""


def validate(project: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["validate", str(project)], env=CONFIGURED)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout.splitlines()


YOGA = "shop/funnels/yoga.yml"
CART = "shop/funnels/abandoned-cart.yml"


def test_the_starter_project_is_valid_and_summarised(project: Path) -> None:
    code, lines = validate(project)
    assert code == 0, lines
    assert lines[0].startswith('abandoned-cart — sequence "Abandoned cart": starts on cart_updated')
    assert any(line.startswith('yoga — funnel "Yoga for beginners": 4 stages, 15 steps, 8 emails') for line in lines)
    assert lines[-1] == "ok: 2 flow(s), 0 warning(s)"


def test_unknown_key_with_did_you_mean(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "title: Yoga", "titel: Yoga")
    code, lines = validate(project)
    assert code == 1
    assert f"{YOGA}:2: unknown key 'titel' in a funnel (did you mean 'title'?)" in lines


def test_unknown_key_in_a_step(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "      - {send: welcome-core, capped: false}\n", "      - send: welcome-core\n        iff: {has_tag: x}\n")
    code, lines = validate(project)
    assert code == 1
    assert f"{YOGA}:40: unknown key 'iff' in a send step (did you mean 'if'?)" in lines


def test_bad_duration(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "      - wait: 1d                  #", "      - wait: 1 day               #")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith(f"{YOGA}:18: wait: bad duration '1 day'") for line in lines), lines


def test_bad_duration_in_a_deadline(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "{name: core, in: 72h}", "{name: core, in: 3 days}")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith(f"{YOGA}:32: deadline.in: bad duration '3 days'") for line in lines), lines


def test_unknown_template(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "      - send: welcome             #", "      - send: welcom              #")
    code, lines = validate(project)
    assert code == 1
    assert f"{YOGA}:17: unknown template 'welcom': shop/templates/yoga/welcom.html does not exist (did you mean 'welcome'?)" in lines


def test_unknown_notify_template(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "template: call-lead", "template: call-leed")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith(f"{YOGA}:34: unknown template 'call-leed'") for line in lines), lines


def test_undefined_template_variable(project: Path) -> None:
    edit(project / "templates/yoga/tripwire-offer.html", "and a calm routine you can keep.</p>", "and a calm routine you can keep, {{ coupon }}.</p>")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith("shop/templates/yoga/tripwire-offer.html:11: undefined variable 'coupon'") for line in lines), lines


def test_undefined_variable_in_the_subject(project: Path) -> None:
    edit(project / "templates/yoga/tripwire-offer.html", "subject: \"{{ lead.first_name or 'Friend' }}", "subject: \"{{ name or 'Friend' }}")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith("shop/templates/yoga/tripwire-offer.html:2: undefined variable 'name'") for line in lines), lines


def test_template_syntax_error_has_its_line(project: Path) -> None:
    edit(project / "templates/yoga/tripwire-offer.html", "<p>See you on the mat,", "{% if %}<p>See you on the mat,")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith("shop/templates/yoga/tripwire-offer.html:16: template error:") for line in lines), lines


def test_unknown_filter_is_a_template_error(project: Path) -> None:
    edit(project / "templates/yoga/tripwire-offer.html", "| datetime }}", "| datetiem }}")
    code, lines = validate(project)
    assert code == 1
    assert "shop/templates/yoga/tripwire-offer.html:13: template error: No filter named 'datetiem'." in lines


def test_email_without_subject(project: Path) -> None:
    edit(project / "templates/yoga/welcome-core.html", "subject:", "subjet:")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith("shop/templates/yoga/welcome-core.html:2: unknown front matter key 'subjet' (did you mean 'subject'?)") for line in lines), lines


def test_undefined_deadline_in_a_condition(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "deadline_passed: tripwire", "deadline_passed: tripwir")
    code, lines = validate(project)
    assert code == 1
    assert f"{YOGA}:23: deadline_passed: undefined deadline 'tripwir' (did you mean 'tripwire'?)" in lines


def test_undefined_deadline_in_a_wait_and_an_offer(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "{until_deadline: tripwire}", "{until_deadline: later}")
    edit(project / "funnels/yoga.yml", "    deadline: tripwire\n", "    deadline: soon\n")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith(f"{YOGA}:24: wait: undefined deadline 'later'") for line in lines), lines
    assert any(line.startswith(f"{YOGA}:13: offer 'mini-course': undefined deadline 'soon'") for line in lines), lines


def test_undefined_deadline_and_offer_in_a_template(project: Path) -> None:
    edit(project / "templates/yoga/tripwire-offer.html", "deadline('tripwire') | datetime", "deadline('tripwir') | datetime")
    edit(project / "templates/yoga/tripwire-offer.html", "offer_url('mini-course')", "offer_url('maxi-course')")
    code, lines = validate(project)
    assert code == 1
    assert "shop/templates/yoga/tripwire-offer.html:13: undefined deadline 'tripwir' in yoga (did you mean 'tripwire'?)" in lines
    assert "shop/templates/yoga/tripwire-offer.html:15: undefined offer 'maxi-course' in yoga (did you mean 'mini-course'?)" in lines


def test_goto_to_a_missing_id(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "      - send: upsell-offer\n", "      - send: upsell-offer\n      - goto: welcome-cor\n")
    code, lines = validate(project)
    assert code == 1
    assert f"{YOGA}:42: goto: no step with id 'welcome-cor' in this stage (did you mean 'welcome-core'?)" in lines


def test_goto_cannot_leave_its_stage(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "      - send: upsell-offer\n", "      - send: upsell-offer\n      - goto: welcome\n")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith(f"{YOGA}:42: goto: no step with id 'welcome' in this stage") for line in lines), lines


def test_duplicate_slugs(project: Path) -> None:
    shutil.copy(project / "funnels/abandoned-cart.yml", project / "funnels/cart-copy.yml")
    code, lines = validate(project)
    assert code == 1
    assert f"shop/funnels/cart-copy.yml:1: duplicate slug 'abandoned-cart': also used by {CART}" in lines


def test_duplicate_step_ids(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "      - {send: thanks-mini, capped: false}", "      - send: thanks-mini\n        id: hello")
    edit(project / "funnels/yoga.yml", "      - {send: welcome-core, capped: false}\n", "      - send: welcome-core\n        id: hello\n")
    code, lines = validate(project)
    assert code == 1
    assert f"{YOGA}:41: duplicate step id 'hello'" in lines


def test_duplicate_stage_names(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "  - stage: vip\n", "  - stage: customer\n")
    code, lines = validate(project)
    assert code == 1
    assert f"{YOGA}:42: duplicate stage 'customer' (first at line 36)" in lines


def test_later_stage_without_enter_on(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "    enter_on: {event: purchase, product: coaching}\n", "")
    code, lines = validate(project)
    assert code == 1
    assert f"{YOGA}:42: stage 'vip' needs `enter_on: {{event: …}}`: only the first stage is entered by subscribing" in lines


def test_yaml_syntax_error_has_its_line(project: Path) -> None:
    edit(project / "funnels/abandoned-cart.yml", "  - send: cart-2\n", "  - send: [cart-2\n")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith(f"{CART}:13: YAML syntax error:") for line in lines), lines


def test_duplicate_yaml_keys(project: Path) -> None:
    edit(project / "funnels/abandoned-cart.yml", "restart: true", "restart: true\nrestart: false")
    code, lines = validate(project)
    assert code == 1
    assert f"{CART}:5: duplicate key 'restart'" in lines


def test_every_problem_is_reported_in_one_run(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "title: Yoga", "titel: Yoga")
    edit(project / "funnels/yoga.yml", "      - wait: 7d", "      - wait: 7 days")
    edit(project / "funnels/abandoned-cart.yml", "  - send: cart-1", "  - send: cart-one")
    edit(project / "templates/yoga/welcome-core.html", "{% block body %}", "{% block body %}{{ oops }}")
    code, lines = validate(project)
    assert code == 1
    reported = {line.split(": ", 1)[0] for line in lines}
    assert {f"{YOGA}:2", f"{YOGA}:40", f"{CART}:10"} <= reported
    assert any(line.startswith("shop/templates/yoga/welcome-core.html:") and "'oops'" in line for line in lines)


def test_a_broken_file_does_not_hide_the_others(project: Path) -> None:
    (project / "funnels/broken.yml").write_text("funnel: [\n")
    edit(project / "funnels/abandoned-cart.yml", "  - send: cart-1", "  - send: cart-one")
    code, lines = validate(project)
    assert code == 1
    assert any(line.startswith("shop/funnels/broken.yml:") and "YAML syntax error" in line for line in lines)
    assert any(line.startswith(f"{CART}:10: unknown template 'cart-one'") for line in lines)


# Warnings: legal but likely wrong; exit 0.


def test_cart_sequence_that_no_purchase_stops(project: Path) -> None:
    edit(project / "funnels/abandoned-cart.yml", "  - {event: purchase}\n", "")
    code, lines = validate(project)
    assert code == 0, lines
    assert any(line.startswith(f"{CART}:1: warning: sequence 'abandoned-cart' starts on cart_updated but no purchase stops it") for line in lines), lines


def test_step_nobody_can_reach(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "      - wait: 7d\n", "      - exit\n      - wait: 7d\n")
    code, lines = validate(project)
    assert code == 0, lines
    assert f"{YOGA}:41: warning: step 'wait-after-exit' can never be reached: the step before it always jumps or exits" in lines


def test_loop_without_a_wait(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "      - send: upsell-offer\n", "      - send: upsell-offer\n        id: upsell\n      - tag: pushed\n      - goto: upsell\n")
    code, lines = validate(project)
    assert code == 0, lines
    assert f"{YOGA}:44: warning: goto 'upsell' makes a loop with no wait in it: a lead would go round it at once" in lines


def test_loop_with_a_wait_is_fine(project: Path) -> None:
    edit(project / "funnels/yoga.yml", "      - send: upsell-offer\n", "      - send: upsell-offer\n        id: upsell\n      - wait: 30d\n      - goto: upsell\n        if: {not: {has_tag: bought-upsell}}\n")
    code, lines = validate(project)
    assert code == 0, lines
    assert not any(": warning:" in line for line in lines), lines


def test_deadline_no_email_mentions(project: Path) -> None:
    edit(project / "templates/yoga/core-offer.html", "deadline('core')", "lead.email")
    code, lines = validate(project)
    assert code == 0, lines
    assert any(line.startswith(f"{YOGA}:32: warning: deadline 'core' is never shown") for line in lines), lines


def test_missing_project_folder(tmp_path: Path) -> None:
    code, lines = validate(tmp_path / "nowhere")
    assert code == 1
    assert lines[0].endswith("nowhere/funnels:1: no funnels/ folder here; run `autofunnel init` to start a project")
