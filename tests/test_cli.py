"""The installed `autofunnel` command, as a newcomer runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from click.testing import CliRunner

from autofunnel.cli import main


def autofunnel(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = shutil.which("autofunnel") or ""
    assert command, "the autofunnel console script is installed with the package"
    return subprocess.run([command, *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_init_then_validate_exits_zero(tmp_path: Path) -> None:
    made = autofunnel("init", "x", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "x/funnels/yoga.yml").is_file()
    assert (tmp_path / "x/templates/layouts/base.html").is_file()
    assert (tmp_path / "x/templates/abandoned-cart/cart-last-call.html").is_file()
    checked = autofunnel("validate", "x", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1] == "ok: 2 flow(s), 3 warning(s)"  # base URL at localhost, no sender for the cart, no postal address


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert autofunnel("init", "x", cwd=tmp_path).returncode == 0
    (tmp_path / "x/funnels/yoga.yml").write_text("mine")
    again = autofunnel("init", "x", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr == "error: x/.gitignore already exists; nothing was written (init only writes into a new or empty project)\n"
    assert (tmp_path / "x/funnels/yoga.yml").read_text() == "mine"


def test_a_bad_setting_is_one_line_naming_the_key(tmp_path: Path) -> None:
    result = autofunnel("db", "upgrade", cwd=tmp_path, env={"AUTOFUNNEL_SEND_RATE": "fast"})
    assert result.returncode == 2
    assert result.stderr == "error: AUTOFUNNEL_SEND_RATE: expected a number of emails per second, got 'fast'\n"
    (tmp_path / "autofunnel.toml").write_text("smtp_ur = 'smtp://x'\n")
    result = autofunnel("db", "upgrade", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: autofunnel.toml: unknown key 'smtp_ur' (did you mean 'smtp_url'?)\n"


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("init", "validate", "db", "apikey", "user"):
        assert f"  {command} " in result.output
    assert "AUTOFUNNEL_PROJECT_DIR" in result.output
