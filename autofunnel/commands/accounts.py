"""`user list|delete` and `apikey list|revoke`: thin shells over autofunnel.services.credentials."""

from __future__ import annotations

import sys

import click

from autofunnel.cli import State, friendly_errors, pass_state


def _when(moment: object) -> str:
    return "never" if moment is None else str(moment)[:16].replace("T", " ")


@click.command("list")
@pass_state
@friendly_errors
def user_list(state: State) -> None:
    """Every admin user with the last time they logged in (UTC)."""
    from autofunnel.services.credentials import list_users
    from autofunnel.services.database import open_database

    database = open_database(state.settings.resolved_database_url)
    try:
        users = list_users(database)
    finally:
        database.dispose()
    if not users:
        click.echo("no admin users; create one with: autofunnel user create you@example.com")
    for info in users:
        click.echo(f"{info.email}  created {_when(info.created_at)}  last login {_when(info.last_login_at)}")


@click.command("delete")
@click.argument("email")
@pass_state
@friendly_errors
def user_delete(state: State, email: str) -> None:
    """Delete the admin user EMAIL; their open sessions stop working."""
    from autofunnel.services.credentials import delete_user
    from autofunnel.services.database import open_database

    database = open_database(state.settings.resolved_database_url)
    try:
        deleted = delete_user(database, email)
    finally:
        database.dispose()
    if not deleted:
        click.echo(f"error: no admin user {email.strip().lower()}", err=True)
        sys.exit(2)
    click.echo(f"deleted admin user {email.strip().lower()}")


@click.command("list")
@pass_state
@friendly_errors
def apikey_list(state: State) -> None:
    """Every API key by name and prefix (never the key itself), newest first."""
    from autofunnel.services.credentials import list_api_keys
    from autofunnel.services.database import open_database

    database = open_database(state.settings.resolved_database_url)
    try:
        keys = list_api_keys(database)
    finally:
        database.dispose()
    if not keys:
        click.echo("no API keys; create one with: autofunnel apikey create --name shop")
    for info in keys:
        state_text = f"revoked {_when(info.revoked_at)}" if info.revoked_at else f"last used {_when(info.last_used_at)}"
        click.echo(f"{info.prefix}...  {info.name}  created {_when(info.created_at)}  {state_text}")


@click.command("revoke")
@click.argument("prefix")
@pass_state
@friendly_errors
def apikey_revoke(state: State, prefix: str) -> None:
    """Stop the key whose prefix (as `apikey list` shows it) is PREFIX from working."""
    from autofunnel.clock import SystemClock
    from autofunnel.services.credentials import revoke_api_key_by_prefix
    from autofunnel.services.database import open_database

    database = open_database(state.settings.resolved_database_url)
    try:
        info = revoke_api_key_by_prefix(database, SystemClock(), prefix)
    finally:
        database.dispose()
    if info is None:
        click.echo(f"error: no live API key with prefix {prefix}", err=True)
        sys.exit(2)
    click.echo(f"revoked API key {info.name!r} ({info.prefix}...)")
