"""`autofunnel report-recount`: the report's tallies counted again, with a progress bar."""

from __future__ import annotations

import click

from autofunnel.cli import State, friendly_errors, pass_state


@click.command("report-recount")
@pass_state
@friendly_errors
def report_recount(state: State) -> None:
    """Count the report's tallies again from the stored facts (once after an upgrade that asks for it: see the README)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from autofunnel.services.recount import RECOUNT_PARTS, recount
    from autofunnel.services.runtime import Runtime

    runtime = Runtime.open(state.settings)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()) as bar:
            task = bar.add_task("recounting", total=RECOUNT_PARTS)
            done = [0]

            def progress(part: str) -> None:
                bar.update(task, completed=done[0], description=f"recounting {part}")
                done[0] += 1

            recount(runtime, progress)
            bar.update(task, completed=RECOUNT_PARTS, description="recounted")
    finally:
        runtime.close()
    click.echo("report tallies recounted; reports add them up again")
