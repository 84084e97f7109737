import re
from pathlib import Path

import pytest

from autofunnel.config import load_settings
from autofunnel.errors import ConfigError


def test_defaults_need_nothing(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={})
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'autofunnel.db').resolve()}"
    assert settings.smtp_url == "file://./outbox"
    assert settings.double_opt_in is False
    assert settings.secret_key == ()


def test_file_then_env_wins(tmp_path: Path) -> None:
    (tmp_path / "autofunnel.toml").write_text('send_rate = 5\nmail_from = "Shop <a@shop.example>"\nsecret_key = ["aaaaaaaaaaaaaaaa1", "bbbbbbbbbbbbbbbb2"]\n')
    settings = load_settings(tmp_path, environ={"AUTOFUNNEL_SEND_RATE": "12.5", "AUTOFUNNEL_DOUBLE_OPT_IN": "yes"})
    assert settings.send_rate == 12.5
    assert settings.mail_from == "Shop <a@shop.example>"
    assert settings.secret_key == ("aaaaaaaaaaaaaaaa1", "bbbbbbbbbbbbbbbb2")
    assert settings.double_opt_in is True
    assert settings.sources["send_rate"] == "env" and settings.sources["mail_from"] == "file"


def test_comma_separated_keys_rotate(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={"AUTOFUNNEL_SECRET_KEY": "new-key-0123456789, old-key-0123456789"})
    assert settings.secret_key == ("new-key-0123456789", "old-key-0123456789")


def test_relative_sqlite_paths_live_in_the_project(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={"AUTOFUNNEL_DATABASE_URL": "sqlite:///data/shop.db"})
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'data/shop.db').resolve()}"
    url = "postgresql://u:p@db/x"
    assert load_settings(tmp_path, environ={"AUTOFUNNEL_DATABASE_URL": url}).resolved_database_url == url


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUTOFUNNEL_SEND_RATE": "fast"}, "AUTOFUNNEL_SEND_RATE: expected a number of emails per second, got 'fast'"),
        ({"AUTOFUNNEL_SEND_RATE": "0"}, "AUTOFUNNEL_SEND_RATE: must be greater than 0"),
        ({"AUTOFUNNEL_DOUBLE_OPT_IN": "maybe"}, "AUTOFUNNEL_DOUBLE_OPT_IN: expected true or false, got 'maybe'"),
        ({"AUTOFUNNEL_SMTP_URL": "http://x"}, "AUTOFUNNEL_SMTP_URL: expected smtp://"),
        ({"AUTOFUNNEL_SECRET_KEY": "short"}, "AUTOFUNNEL_SECRET_KEY: each secret key needs at least 16 characters"),
        ({"AUTOFUNNEL_DATABASE_URL": "autofunnel.db"}, "AUTOFUNNEL_DATABASE_URL: expected a URL"),
        ({"AUTOFUNNEL_BASE_URL": "shop.example"}, "AUTOFUNNEL_BASE_URL: expected an http:// or https:// URL"),
    ],
)
def test_bad_env_values_name_the_key(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ=env)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_bad_file_values_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "autofunnel.toml").write_text("send_rat = 5\n")
    with pytest.raises(ConfigError, match=r"autofunnel.toml: unknown key 'send_rat' \(did you mean 'send_rate'\?\)"):
        load_settings(tmp_path, environ={})
    (tmp_path / "autofunnel.toml").write_text("send_rate = true\n")
    with pytest.raises(ConfigError, match="autofunnel.toml: send_rate: expected a number"):
        load_settings(tmp_path, environ={})
    (tmp_path / "autofunnel.toml").write_text("send_rate = \n")
    with pytest.raises(ConfigError, match="autofunnel.toml"):
        load_settings(tmp_path, environ={})


def test_the_starter_toml_uncommented_is_valid(tmp_path: Path) -> None:
    from importlib.resources import files

    text = (files("autofunnel") / "starter" / "autofunnel.toml").read_text()
    uncommented = re.sub(r"(?m)^# (\w+ = )", r"\1", text)
    (tmp_path / "autofunnel.toml").write_text(uncommented)
    settings = load_settings(tmp_path, environ={})
    assert settings.smtp_url.startswith("file://")
