"""The `autofunnel` command: each subcommand parses its options, calls one
service, and prints the answer. No business rule lives here."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import wraps
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from autofunnel import __version__
from autofunnel.config import Settings, load_settings
from autofunnel.errors import AutofunnelError

if TYPE_CHECKING:
    from autofunnel.store.db import Database

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """What every subcommand may need, built only when first asked for."""

    def __init__(self, project_dir: Path | None) -> None:
        self.project_dir = project_dir
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.project_dir)
        return self._settings


def friendly_errors(func: F) -> F:
    """Turn autofunnel's own errors into one line and exit 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AutofunnelError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


pass_state = click.make_pass_decorator(State)


class CommandGroup(click.Group):
    """The commands here, plus those declared as `autofunnel.commands` entry points.

    The commands that run the long-lived processes (`run`, `web`, `worker`, `scheduler`)
    live with the Celery shell in the top-level `workers` package, which nothing under
    autofunnel/ imports (imports point one way, DESIGN.md); the package declares them in
    its metadata and they are loaded by name when asked for, click's lazy-command pattern.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(entry.name for entry in _declared_commands())})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            entry = next((entry for entry in _declared_commands() if entry.name == name), None)
            command = entry.load() if entry is not None else None
        return command


def _declared_commands() -> list[EntryPoint]:
    return list(entry_points(group="autofunnel.commands"))


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "AUTOFUNNEL"})
@click.option(
    "--project-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="AUTOFUNNEL_PROJECT_DIR",
    show_envvar=True,
    help="Where funnels/, templates/ and autofunnel.toml are (default: the current folder).",
)
@click.version_option(__version__, prog_name="autofunnel")
@click.pass_context
def main(ctx: click.Context, project_dir: Path | None) -> None:
    """autofunnel: email sales funnels from YAML files, with honest reports."""
    ctx.obj = State(project_dir)


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@pass_state
@friendly_errors
def init(state: State, directory: Path | None) -> None:
    """Write a working example project: the yoga funnel, an abandoned-cart sequence, their emails."""
    from autofunnel.services.starter import init_project

    target = directory or state.project_dir or Path(".")
    written = init_project(target)
    click.echo(f"wrote {len(written)} files to {target}/")
    click.echo(f"next: autofunnel validate {target}")


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--plan", is_flag=True, help="Then list what the files would do to the leads waiting in the running flows.")
@pass_state
@friendly_errors
def validate(state: State, directory: Path | None, plan: bool) -> None:
    """Check funnels and templates; print every problem as file:line: message (exit 1 on errors)."""
    from autofunnel.services.project import summarize, validate_project
    from autofunnel.services.setup_checks import setup_warnings

    root = directory or state.project_dir or Path(".")
    result = validate_project(root)
    if result.flows:
        result.problems.extend(setup_warnings(load_settings(root), result.flows))
    for problem in result.problems:
        click.echo(str(problem))
    if not result.ok:
        click.echo(f"{len(result.errors)} error(s), {len(result.warnings)} warning(s)", err=True)
        sys.exit(1)
    for flow in result.flows.values():
        for line in summarize(flow):
            click.echo(line)
    click.echo(f"ok: {len(result.flows)} flow(s), {len(result.warnings)} warning(s)")
    if plan:
        from autofunnel.commands.plan import print_plan

        print_plan(state.settings, result.flows)


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@pass_state
@friendly_errors
def db_upgrade(state: State) -> None:
    """Apply the migrations this version needs (Alembic); safe to run again."""
    from autofunnel.services.database import upgrade_database

    status = upgrade_database(state.settings.resolved_database_url)
    click.echo(f"database at {status.revision} ({status.backend})")


@main.group()
def apikey() -> None:
    """Keys for the HTTP API."""


@apikey.command("create")
@click.option("--name", default="default", show_default=True, help="A label to tell keys apart in `apikey list`.")
@pass_state
@friendly_errors
def apikey_create(state: State, name: str) -> None:
    """Create an API key and print it once, alone on the last line (only its hash is stored)."""
    from autofunnel.clock import SystemClock
    from autofunnel.services.credentials import create_api_key
    from autofunnel.services.database import open_database

    database = open_database(state.settings.resolved_database_url)
    try:
        info, key = create_api_key(database, SystemClock(), name)
    finally:
        database.dispose()
    click.echo(f"created API key {info.name!r} ({info.prefix}...); store it now, it is not shown again:")
    click.echo(key)


@apikey.command("list")
@pass_state
@friendly_errors
def apikey_list(state: State) -> None:
    """List API keys (name, prefix, created, last used, revoked); keys themselves are never shown."""
    from autofunnel.services.credentials import list_api_keys

    with _database(state) as database:
        keys = list_api_keys(database)
    for key in keys:
        used = f"last used {_moment(key.last_used_at)}" if key.last_used_at else "never used"
        state_text = f"revoked {_moment(key.revoked_at)}" if key.revoked_at else "live"
        click.echo(f"{key.prefix}...  {key.name}  created {_moment(key.created_at)}  {used}  {state_text}")
    if not keys:
        click.echo("no API keys; create one with `autofunnel apikey create --name NAME`")


@apikey.command("revoke")
@click.argument("prefix")
@pass_state
@friendly_errors
def apikey_revoke(state: State, prefix: str) -> None:
    """Stop the live key whose prefix (as `apikey list` shows it) starts with PREFIX."""
    from autofunnel.clock import SystemClock
    from autofunnel.services.credentials import revoke_api_key_by_prefix

    with _database(state) as database:
        info = revoke_api_key_by_prefix(database, SystemClock(), prefix)
    click.echo(f"revoked API key {info.name!r} ({info.prefix}...)")


@main.group()
def user() -> None:
    """Admin users."""


@user.command("create")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@pass_state
@friendly_errors
def user_create(state: State, email: str, password_stdin: bool) -> None:
    """Create an admin user; without --password-stdin a password is generated and printed once."""
    from autofunnel.clock import SystemClock
    from autofunnel.services.credentials import create_user
    from autofunnel.services.database import open_database

    password = sys.stdin.readline().strip() if password_stdin else None
    database = open_database(state.settings.resolved_database_url)
    try:
        info, generated = create_user(database, SystemClock(), email, password)
    finally:
        database.dispose()
    click.echo(f"created admin user {info.email}; log in at {state.settings.base_url}/admin")
    if generated is not None:
        click.echo("generated password; store it now, it is not shown again:")
        click.echo(generated)


@user.command("list")
@pass_state
@friendly_errors
def user_list(state: State) -> None:
    """List admin users and when each last logged in."""
    from autofunnel.services.credentials import list_users

    with _database(state) as database:
        users = list_users(database)
    for info in users:
        last = _moment(info.last_login_at) if info.last_login_at else "never"
        click.echo(f"{info.email}  created {_moment(info.created_at)}  last login {last}")
    if not users:
        click.echo("no admin users; create one with `autofunnel user create EMAIL`")


@user.command("delete")
@click.argument("email")
@pass_state
@friendly_errors
def user_delete(state: State, email: str) -> None:
    """Delete an admin user; their open sessions end at their next request."""
    from autofunnel.services.credentials import delete_user

    with _database(state) as database:
        info = delete_user(database, email)
    click.echo(f"deleted admin user {info.email}")


@contextmanager
def _database(state: State) -> Iterator[Database]:
    from autofunnel.services.database import open_database

    database = open_database(state.settings.resolved_database_url)
    try:
        yield database
    finally:
        database.dispose()


def _moment(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


@main.command()
@click.option("--now", "at", metavar="ISO", help="Run the pass as if it were this moment (e.g. 2026-03-01T09:00:00Z).")
@click.option("--dry-run", is_flag=True, help="Show what would happen; write and send nothing.")
@click.option("--force", is_flag=True, help="With --now more than a minute from the clock and no --dry-run: send anyway.")
@pass_state
@friendly_errors
def tick(state: State, at: str | None, dry_run: bool, force: bool) -> None:
    """One scheduler pass: run every step that is due and send the emails it queues."""
    from autofunnel.clock import FixedClock, SystemClock
    from autofunnel.services.inputs import check_tick_moment, parse_moment
    from autofunnel.services.runtime import Runtime
    from autofunnel.services.scheduler import run_tick

    clock = FixedClock(parse_moment(at, "--now", SystemClock().now())) if at else SystemClock()
    check_tick_moment(clock.now(), SystemClock().now(), dry_run=dry_run, force=force)
    runtime = Runtime.open(state.settings, clock)
    try:
        result = run_tick(runtime, dry_run=dry_run)
    finally:
        runtime.close()
    for line in result.lines:
        click.echo(line)
    click.echo(result.summary)
    if result.render_failures:
        click.echo(f"error: {len(result.render_failures)} email(s) failed to render: template {', '.join(sorted(set(result.render_failures)))}; run `autofunnel validate`", err=True)
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@pass_state
@friendly_errors
def status(state: State, as_json: bool) -> None:
    """Queue depth, work due now and how late, sends and failures in the last minute and hour.

    Exits 1 when work is overdue and nothing finished within a lease (nobody is working),
    or when an email's template failed to render in the last hour."""
    import json

    from autofunnel.services.runtime import Runtime
    from autofunnel.services.status import system_status

    runtime = Runtime.open(state.settings)
    try:
        broker, work = system_status(runtime)
    finally:
        runtime.close()
    if as_json:
        click.echo(json.dumps({"broker": broker, **work.as_dict()}))
    else:
        _print_status(broker, work)
    if work.stalled or work.render_failed:
        sys.exit(1)


def _print_status(broker: str, work: Any) -> None:
    depth = "unknown (broker does not answer)" if work.queue_depth is None else f"{work.queue_depth} batch(es) waiting"
    age = "-" if work.oldest_due_age_s is None else f"{work.oldest_due_age_s:.0f} s"
    click.echo(f"broker:        {broker}")
    click.echo(f"queue depth:   {depth}")
    click.echo(f"due now:       {work.due_now} (oldest due {age} ago)")
    click.echo(f"sent:          {work.sent_last_minute} in the last minute, {work.sent_last_hour} in the last hour")
    click.echo(f"failed:        {work.failed_last_minute} in the last minute, {work.failed_last_hour} in the last hour")
    click.echo(f"work:          {work.stalled or work.render_failed or 'ok'}")


@main.command()
@click.argument("funnel")
@click.option("--mode", type=click.Choice(["cohort", "calendar"]), default="cohort", show_default=True, help="cohort: leads by the day they entered; calendar: what happened each day.")
@click.option("--by", metavar="channel|product|segment|region|owner|field:NAME", help="Split every figure into groups.")
@click.option("--from", "start", metavar="YYYY-MM-DD", help="First day (default: 29 days before --to).")
@click.option("--to", "end", metavar="YYYY-MM-DD", help="Last day, included (default: today, UTC).")
@click.option("--interval", type=click.Choice(["day", "week", "month"]), help="The same figures per period, for trend lines.")
@click.option("--attribution", type=click.Choice(["first", "last", "linear", "position", "time_decay"]), help="Share revenue out to channels and emails.")
@click.option("--window", default="7d", show_default=True, help="How long before a purchase an email click counts for attribution.")
@click.option("--format", "output", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@pass_state
@friendly_errors
def report(state: State, funnel: str, mode: str, by: str | None, start: str | None, end: str | None,
           interval: str | None, attribution: str | None, window: str, output: str) -> None:
    """Where leads drop out: the funnel report, as a table, CSV or the API's JSON."""
    import json

    from rich.console import Console

    from autofunnel.report_format import print_report, report_csv
    from autofunnel.services.report import funnel_report, parse_report_query, seller_today
    from autofunnel.services.runtime import Runtime

    runtime = Runtime.open(state.settings)
    try:
        params = {"mode": mode, "by": by, "from": start, "to": end, "interval": interval, "attribution": attribution, "window": window}
        result = funnel_report(runtime, parse_report_query(funnel, params, seller_today(runtime)))
    finally:
        runtime.close()
    if output == "json":
        click.echo(json.dumps(result))
    elif output == "csv":
        click.echo(report_csv(result), nl=False)
    else:
        print_report(result, Console())


@main.group()
def spend() -> None:
    """Ad spend, for the report's cost per lead, cost per customer and return on spend."""


@spend.command("add")
@click.argument("channel")
@click.argument("amount")
@click.option("--date", "day", required=True, metavar="YYYY-MM-DD", help="The day the money was spent.")
@click.option("--currency", default="EUR", show_default=True, help="Three-letter currency code.")
@pass_state
@friendly_errors
def spend_add(state: State, channel: str, amount: str, day: str, currency: str) -> None:
    """Add AMOUNT spent on CHANNEL that day; a second entry for the same day and currency adds to it."""
    from autofunnel.services.runtime import Runtime
    from autofunnel.services.spend import add_spend, parse_spend

    entry = parse_spend(channel, amount, day, currency)
    runtime = Runtime.open(state.settings)
    try:
        total = add_spend(runtime, entry)
    finally:
        runtime.close()
    click.echo(f"{entry.channel} {entry.day}: {total} {entry.currency}")


from autofunnel import cli_simulate  # noqa: E402  (registered last: these modules use this one's helpers)
from autofunnel.commands.forecast import forecast  # noqa: E402
from autofunnel.commands.leads import leads  # noqa: E402
from autofunnel.commands_forms import form  # noqa: E402
from autofunnel.commands.report_recount import report_recount  # noqa: E402

cli_simulate.register(main)
main.add_command(leads)
main.add_command(forecast)
main.add_command(form)
main.add_command(report_recount)
