"""`autofunnel validate --plan`: the edit plan printed after a clean validation."""

from __future__ import annotations

import click

from autofunnel.config import Settings
from autofunnel.domain.model import Flow


def print_plan(settings: Settings, flows: dict[str, Flow]) -> None:
    """One line per group of waiting leads the files would move or end, or that none would be."""
    from autofunnel.services.database import open_database
    from autofunnel.services.plan import edit_plan

    database = open_database(settings.resolved_database_url)
    try:
        rows = edit_plan(database, flows)
    finally:
        database.dispose()
    if not rows:
        click.echo("plan: no waiting lead is affected by these files")
        return
    click.echo("plan: leads waiting on steps these files remove, rename or change")
    for row in rows:
        where = "/".join(part for part in (row.flow, row.stage, row.step) if part)
        click.echo(f"  {where}: {row.leads} lead(s) — {row.outcome}")
