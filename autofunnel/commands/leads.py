"""`autofunnel leads import`: a CSV list into a funnel, with a progress bar and the bad rows reported."""

from __future__ import annotations

from pathlib import Path

import click

from autofunnel.cli import State, friendly_errors, pass_state

SHOWN_REJECTS = 50


@click.group()
def leads() -> None:
    """Leads in bulk."""


@leads.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--funnel", required=True, help="The funnel whose first stage the leads enter.")
@click.option("--dry-run", is_flag=True, help="Check every row and count what would be imported; write nothing.")
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the bad rows here: their columns, line and reason.")
@click.option(
    "--writers", type=click.IntRange(1, 16), default=None,
    help="PostgreSQL: chunks of 5,000 rows written at once, each on its own connection (default 2). SQLite writes one at a time.",
)
@pass_state
@friendly_errors
def import_command(state: State, file: Path, funnel: str, dry_run: bool, rejects_path: Path | None, writers: int | None) -> None:
    """Import FILE.csv (email, first_name, timezone, owner, tags, source.<key>, other columns → fields).

    Safe to run again: leads already in the funnel are not entered twice, so
    after a crash the same command adds only what is missing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from autofunnel.services.importing import import_leads
    from autofunnel.services.runtime import Runtime

    console = Console(stderr=True)
    runtime = Runtime.open(state.settings)
    rejects = rejects_path.open("w", encoding="utf-8", newline="") if rejects_path else None
    try:
        with Progress(
            TextColumn("[bold]importing" if not dry_run else "[bold]checking"), BarColumn(), MofNCompleteColumn(),
            TextColumn("rows"), TextColumn("{task.fields[speed]} rows/s"), TimeElapsedColumn(),
            console=console, transient=False,
        ) as progress:
            task = progress.add_task("rows", total=None, speed="-")

            def advance(rows: int) -> None:
                progress.advance(task, rows)
                elapsed = progress.tasks[0].elapsed or 0.0
                done = progress.tasks[0].completed
                progress.update(task, speed=f"{done / elapsed:,.0f}" if elapsed else "-")

            result = import_leads(runtime, file, funnel, dry_run=dry_run, rejects=rejects, progress=advance, writers=writers)
            progress.update(task, total=result.rows)
    finally:
        runtime.close()
        if rejects is not None:
            rejects.close()
    for item in result.rejects[:SHOWN_REJECTS]:
        click.echo(f"{file.name}:{item.line}: {item.reason}")
    if result.rejected > SHOWN_REJECTS:
        where = f" (all in {rejects_path})" if rejects_path else " (--rejects FILE writes them all)"
        click.echo(f"… and {result.rejected - SHOWN_REJECTS} more rejected row(s){where}")
    verb = "would import" if dry_run else "imported"
    click.echo(
        f"{result.rows} row(s): {verb} {result.imported}, already in {funnel} {result.already_in_funnel}, rejected {result.rejected}"
        + (" (dry run: nothing written)" if dry_run else "")
    )
