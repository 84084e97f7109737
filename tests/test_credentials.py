"""`autofunnel db upgrade`, `apikey create` and `user create`, end to end through the CLI
on this run's database, and the credential checks the web layer will call."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text

from autofunnel.cli import main
from autofunnel.clock import FixedClock
from autofunnel.errors import DuplicateError, InvalidInputError
from autofunnel.services.credentials import (
    check_user_password,
    create_api_key,
    create_user,
    list_api_keys,
    revoke_api_key,
    verify_api_key,
)
from autofunnel.store.db import Database
from autofunnel.store.models import User

pytestmark = pytest.mark.db

Invoke = Callable[..., Result]

NOT_MIGRATED = "error: database is not migrated; run `autofunnel db upgrade`\n"


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Invoke:
    runner = CliRunner()
    env = {"AUTOFUNNEL_DATABASE_URL": database_url, "AUTOFUNNEL_PROJECT_DIR": str(tmp_path)}

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database.from_url(database_url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2025, 5, 1, 12, 0, tzinfo=UTC))


def test_db_upgrade_reports_revision_and_backend(cli: Invoke, db: Database) -> None:
    result = cli("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"database at 0002_reports ({db.backend})\n"
    again = cli("db", "upgrade")
    assert again.exit_code == 0
    assert again.stdout == result.stdout


def test_apikey_create_prints_the_key_last_and_stores_only_its_hash(
    cli: Invoke, db: Database, clock: FixedClock
) -> None:
    assert cli("db", "upgrade").exit_code == 0

    result = cli("apikey", "create", "--name", "shop")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    key = lines[-1]
    assert len(lines) >= 2
    assert key.startswith("af_") and len(key) > 40
    assert key == key.strip() and " " not in key
    assert result.stdout.endswith(f"\n{key}\n")
    with db.read() as session:
        rows = session.execute(text("SELECT * FROM api_keys")).mappings().all()
    assert len(rows) == 1
    assert rows[0]["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert not any(key in str(value) for value in rows[0].values())

    info = verify_api_key(db, clock, key)
    assert info is not None
    assert (info.name, info.last_used_at) == ("shop", clock.now())
    assert info.prefix == key[: len(info.prefix)]
    assert verify_api_key(db, clock, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert verify_api_key(db, clock, "af_" + "x" * 43) is None
    assert verify_api_key(db, clock, "") is None


def test_apikey_create_on_an_unmigrated_database_says_what_to_run(cli: Invoke, database_url: str) -> None:
    result = cli("apikey", "create")
    assert result.exit_code == 2
    assert result.stderr == NOT_MIGRATED
    assert result.stdout == ""


def test_user_create_reads_the_password_from_stdin(cli: Invoke, db: Database, clock: FixedClock) -> None:
    assert cli("db", "upgrade").exit_code == 0

    result = cli("user", "create", "a@b.example", "--password-stdin", input="correct horse battery\nignored\n")

    assert result.exit_code == 0, result.output
    assert "correct horse battery" not in result.output
    assert "a@b.example" in result.stdout
    with db.read() as session:
        stored = session.scalars(select(User.password_hash)).one()
    assert "correct horse battery" not in stored
    user = check_user_password(db, clock, " A@B.example ", "correct horse battery")
    assert user is not None and user.email == "a@b.example"
    assert user.last_login_at == clock.now()
    assert check_user_password(db, clock, "a@b.example", "wrong horse battery") is None
    assert check_user_password(db, clock, "nobody@b.example", "correct horse battery") is None


def test_user_create_without_a_password_prints_a_generated_one_once(
    cli: Invoke, db: Database, clock: FixedClock
) -> None:
    assert cli("db", "upgrade").exit_code == 0

    result = cli("user", "create", "Owner@Shop.example")

    assert result.exit_code == 0, result.output
    password = result.stdout.splitlines()[-1]
    assert len(password) >= 10
    assert result.stdout.count(password) == 1
    assert check_user_password(db, clock, "owner@shop.example", password) is not None


def test_duplicate_user_is_one_line_and_exit_2(cli: Invoke) -> None:
    assert cli("db", "upgrade").exit_code == 0
    assert cli("user", "create", "a@b.example", "--password-stdin", input="0123456789\n").exit_code == 0

    result = cli("user", "create", "  A@b.Example", "--password-stdin", input="9876543210\n")

    assert result.exit_code == 2
    assert result.stderr == "error: a user with email a@b.example already exists\n"


@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        ("a@b.example", "short\n", "at least 10 characters"),
        ("not-an-email", "0123456789\n", "not a valid email address"),
    ],
)
def test_user_create_refuses_bad_input_in_one_line(cli: Invoke, email: str, password: str, message: str) -> None:
    assert cli("db", "upgrade").exit_code == 0
    result = cli("user", "create", email, "--password-stdin", input=password)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_user_create_on_an_unmigrated_database_says_what_to_run(cli: Invoke) -> None:
    result = cli("user", "create", "a@b.example")
    assert result.exit_code == 2
    assert result.stderr == NOT_MIGRATED


def test_db_upgrade_creates_the_sqlite_folder(tmp_path: Path) -> None:
    target = tmp_path / "data" / "nested" / "autofunnel.db"
    env = {"AUTOFUNNEL_DATABASE_URL": f"sqlite:///{target}", "AUTOFUNNEL_PROJECT_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["db", "upgrade"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout == "database at 0002_reports (sqlite)\n"
    assert target.exists()


def test_unmigrated_sqlite_file_is_not_created_by_asking(tmp_path: Path) -> None:
    target = tmp_path / "missing.db"
    env = {"AUTOFUNNEL_DATABASE_URL": f"sqlite:///{target}", "AUTOFUNNEL_PROJECT_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["apikey", "create"], env=env, catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr == NOT_MIGRATED
    assert not target.exists()


def test_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    env = {
        "AUTOFUNNEL_DATABASE_URL": "postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere?connect_timeout=2",
        "AUTOFUNNEL_PROJECT_DIR": str(tmp_path),
    }
    result = CliRunner().invoke(main, ["db", "upgrade"], env=env, catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot connect to the database at postgresql+psycopg://someone:***@")
    assert result.stderr.count("\n") == 1
    assert "s3cret-pw" not in result.output


def test_revoked_and_listed_keys(migrated_db: Database, clock: FixedClock) -> None:
    first, first_key = create_api_key(migrated_db, clock, "one")
    clock.advance(timedelta(seconds=5))
    create_api_key(migrated_db, clock, "two")

    assert [info.name for info in list_api_keys(migrated_db)] == ["two", "one"]
    assert revoke_api_key(migrated_db, clock, first.id)
    assert not revoke_api_key(migrated_db, clock, first.id)
    assert verify_api_key(migrated_db, clock, first_key) is None
    with pytest.raises(InvalidInputError):
        create_api_key(migrated_db, clock, "  ")


def test_last_used_is_refreshed_at_most_once_a_minute(migrated_db: Database, clock: FixedClock) -> None:
    _, key = create_api_key(migrated_db, clock, "k")
    first = verify_api_key(migrated_db, clock, key)
    clock.advance(timedelta(seconds=30))
    assert verify_api_key(migrated_db, clock, key) == first
    clock.advance(timedelta(seconds=31))
    refreshed = verify_api_key(migrated_db, clock, key)
    assert refreshed is not None and refreshed.last_used_at == clock.now()
    assert list_api_keys(migrated_db)[0].last_used_at == clock.now()


def test_create_user_service_refuses_duplicates(migrated_db: Database, clock: FixedClock) -> None:
    info, generated = create_user(migrated_db, clock, "x@shop.example", "long enough pw")
    assert generated is None and info.created_at == clock.now()
    with pytest.raises(DuplicateError):
        create_user(migrated_db, clock, "X@SHOP.example", None)
