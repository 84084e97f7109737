"""`autofunnel simulate` and `autofunnel demo`: thin shells over services/simulate.py and services/demo.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from autofunnel.cli import State, friendly_errors, pass_state


@click.command()
@click.argument("funnel")
@click.option("--leads", default=100, show_default=True, type=click.IntRange(1, 100_000), help="Synthetic leads, subscribing over the first day.")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 365), help="Days to run.")
@click.option("--rates", metavar="S=0.3,…", help="Conversion into each later stage (and open=, click=, unsubscribe=, confirm=); beats the observed ones.")
@click.option("--seed", default=0, show_default=True, type=int, help="The same seed gives the same run.")
@click.option("--events", "events_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Replay this JSONL stream instead of random behaviour.")
@click.option("--json", "as_json", is_flag=True, help="Print the run as one JSON object.")
@pass_state
@friendly_errors
def simulate(state: State, funnel: str, leads: int, days: int, rates: str | None, seed: int, events_file: Path | None, as_json: bool) -> None:
    """Run synthetic leads through FUNNEL on a virtual clock, with the real engine and services
    on a temporary database: which emails go out each day, how many leads sit in each stage, the
    funnel it makes. Touches no real lead and sends nothing."""
    from rich.console import Console

    from autofunnel.clock import SystemClock
    from autofunnel.domain.model import Funnel
    from autofunnel.errors import InvalidInputError
    from autofunnel.services.project import load_project
    from autofunnel.domain.synthetic import merged_rates
    from autofunnel.services.simulate import observed_rates, parse_rates
    from autofunnel.services.simulate import simulate as run_simulation

    settings = state.settings
    project = load_project(Path(settings.project_dir))
    flow = project.flows.get(funnel)
    if not isinstance(flow, Funnel):
        raise InvalidInputError(f"no funnel {funnel!r} in this project", field="funnel")
    given = parse_rates(rates, flow)
    chosen = merged_rates(observed_rates(settings, flow, SystemClock().now().date()), given)
    result = run_simulation(Path(settings.project_dir), funnel, leads=leads, days=days, rates=chosen, seed=seed, events=events_file)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    print_simulation(result, Console())


def print_simulation(result: Any, console: Any) -> None:
    from rich.table import Table

    from autofunnel.report_format import print_report

    rates = result.rates
    stage_rates = ", ".join(f"{name} {value:.0%}" for name, value in rates["stages"].items())
    console.print(
        f"[bold]{result.funnel}[/]: {result.leads} lead(s), {result.days} day(s) from {result.start[:10]}, seed {result.seed}; "
        f"rates ({rates['source']}): open {rates['open']:.0%}, click {rates['click']:.0%} of opens, "
        f"unsubscribe {rates['unsubscribe']:.1%} an email, confirm {rates['confirm']:.0%}; into {stage_rates}"
    )
    stages = list(result.per_day[0].stages) if result.per_day else []
    table = Table(title="day by day (emails sent; leads in each stage at the day's end)")
    table.add_column("day", justify="right")
    table.add_column("date")
    table.add_column("emails sent")
    for name in stages:
        table.add_column(name, justify="right")
    for day in result.per_day:
        sent = ", ".join(f"{template} ×{count}" for template, count in day.sent.items()) or "–"
        table.add_row(str(day.day), day.date, sent, *(str(day.stages[name]) for name in stages))
    console.print(table)
    print_report(result.report, console)
    console.print(
        f"{result.emails} email(s) in {result.seconds:.1f} s: {result.lead_days_per_s:,.0f} lead-days simulated per second "
        "(nothing was sent; a temporary database was used)"
    )


@click.command()
@click.argument("directory", required=False, default="demo", type=click.Path(file_okay=False, path_type=Path))
@click.option("--leads", default=2000, show_default=True, type=click.IntRange(10, 50_000), help="Simulated leads over the 90 days.")
@click.option("--seed", default=0, show_default=True, type=int)
@friendly_errors
def demo(directory: Path, leads: int, seed: int) -> None:
    """Write the example project into DIRECTORY (default: demo) and fill its database with 90 days
    of simulated leads, emails, opens, clicks, purchases, refunds and ad spend; nothing is emailed."""
    from rich.console import Console

    from autofunnel.services.demo import make_demo

    console = Console()
    summary = make_demo(directory, leads=leads, seed=seed, console=console)
    console.print(summary.text)
    since = summary.since.isoformat()
    console.print(f"next: cd {directory} && autofunnel run")
    console.print(f"then: autofunnel report yoga --from {since}    (add --by channel for the channels)")
    sys.stdout.flush()


def register(main: click.Group) -> None:
    main.add_command(simulate)
    main.add_command(demo)
