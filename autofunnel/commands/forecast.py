"""`autofunnel forecast`: what-if figures from the observed funnel, as a rich table or JSON."""

from __future__ import annotations

from typing import Any

import click

from autofunnel.cli import State, friendly_errors, pass_state


@click.command()
@click.argument("funnel")
@click.option("--stage", "stages", multiple=True, metavar="S=+0.05", help="Change a stage's conversion from the previous one: +0.05, -2%, or a new value 0.3. Repeatable.")
@click.option("--traffic", default="1", show_default=True, metavar="×2", help="Multiply the daily new leads (×2, x2 or 2).")
@click.option("--days", default=90, show_default=True, type=click.IntRange(1, 3650), help="The horizon, in days from today.")
@click.option("--goal", metavar="customers=N", help="Which single stage improvement reaches N customers over the horizon.")
@click.option("--observed-days", default=90, show_default=True, type=click.IntRange(1, 3650), help="How many past days of cohorts the rates come from.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap that draws the range.")
@click.option("--json", "as_json", is_flag=True, help="Print the same figures as JSON.")
@pass_state
@friendly_errors
def forecast(state: State, funnel: str, stages: tuple[str, ...], traffic: str, days: int, goal: str | None,
             observed_days: int, seed: int, as_json: bool) -> None:
    """Expected leads per stage, customers and revenue over --days, today and what if."""
    import json

    from autofunnel.services.forecast import ForecastQuery, funnel_forecast, parse_change, parse_goal, parse_traffic
    from autofunnel.services.runtime import Runtime

    query = ForecastQuery(
        funnel, days, parse_traffic(traffic), tuple(parse_change(text) for text in stages),
        parse_goal(goal) if goal else None, observed_days, seed,
    )
    runtime = Runtime.open(state.settings)
    try:
        result = funnel_forecast(runtime, query)
    finally:
        runtime.close()
    if as_json:
        click.echo(json.dumps(result))
    else:
        _print(result)


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    observed = result["observed"]
    console = Console()
    console.print(
        f"[bold]{result['funnel']}[/]: the next {result['days']} days, from {observed['leads']} leads over {observed['days']} observed "
        f"cohort day(s) ({observed['from'] or '-'} → {observed['to']}); range: 5th–95th percentile of a bootstrap over those days"
    )
    table = Table()
    table.add_column("")
    for scenario in result["scenarios"]:
        label = scenario["name"]
        if scenario["name"] != "today":
            parts = ([f"traffic ×{scenario['traffic']:g}"] if scenario["traffic"] != 1 else []) + [
                f"{stage} {'→ ' + format(c['to'], '.1%') if 'to' in c else format(c['by'], '+.1%')}" for stage, c in scenario["changes"].items()
            ]
            label += " (" + ", ".join(parts) + ")"
        table.add_column(label, justify="right")
    names = [row["stage"] for row in result["scenarios"][0]["stages"]]
    for k, name in enumerate(names):
        cells = []
        for scenario in result["scenarios"]:
            row = scenario["stages"][k]
            rate = "" if row["conversion_from_previous"] is None else f" at {row['conversion_from_previous']:.1%}"
            cells.append(f"{row['leads']:,.0f} ({row['low']:,.0f}–{row['high']:,.0f}){rate}")
        table.add_row(f"reach {name}", *cells)
    for figure in ("customers", "revenue"):
        table.add_row(figure, *(f"{s[figure]['expected']:,.0f} ({s[figure]['low']:,.0f}–{s[figure]['high']:,.0f})" for s in result["scenarios"]))
    console.print(table)
    console.print(f"customers: leads that reach {result['customer_stage']}; revenue: customers × the observed net revenue per customer")
    goal = result.get("goal")
    if goal is None:
        return
    if goal["reached_already"]:
        console.print(f"goal {goal['customers']:,.0f} customers: already expected ({goal['expected']:,.0f})")
    elif goal["best"] is None:
        console.print(f"goal {goal['customers']:,.0f} customers: no single stage improvement reaches it (expected {goal['expected']:,.0f})")
    else:
        best = goal["best"]
        console.print(
            f"goal {goal['customers']:,.0f} customers (expected {goal['expected']:,.0f}): raise {best['stage']} from "
            f"{best['from']:.1%} to {best['to']:.1%} (+{(best['to'] - best['from']) * 100:.1f} points)"
        )
        for option in goal["options"]:
            if option is not None and option["stage"] != best["stage"]:
                to = "cannot alone" if option["to"] is None else f"{option['from']:.1%} → {option['to']:.1%}"
                console.print(f"  or {option['stage']}: {to}")
