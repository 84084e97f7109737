"""`autofunnel form FUNNEL`: the embed snippet for a seller's own site."""

from __future__ import annotations

import click


@click.command("form")
@click.argument("funnel")
@click.pass_context
def form(ctx: click.Context, funnel: str) -> None:
    """Print an HTML form for your own site that subscribes to FUNNEL (posts to AUTOFUNNEL_BASE_URL/f/FUNNEL)."""
    from autofunnel.cli import State, friendly_errors
    from autofunnel.services.forms import embed_snippet

    state = ctx.find_object(State)
    assert state is not None

    @friendly_errors
    def run() -> None:
        click.echo(embed_snippet(state.settings, funnel), nl=False)

    run()
