"""The report's JSON drawn for a terminal (rich tables) or written as CSV; no figure is computed here."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

CSV_COLUMNS = (
    "section", "value", "kind", "stage", "step", "reached", "skipped", "conversion_from_previous", "conversion_from_first",
    "median_s", "p90_s", "sent", "opened", "clicked", "unsubscribed", "purchases_7d", "revenue_7d",
    "overall_conversion", "currency", "total", "orders", "average_order", "customers",
    "gross", "refunded", "refunds", "refunded_orders", "unmatched_refunded", "lead_id", "order_id", "at", "amount",
    "spend", "cost_per_lead", "cost_per_customer", "return_on_spend",
    "variant", "leads", "converted", "conversion", "treated_conversion", "held_out_conversion", "lift", "ci95_low", "ci95_high",
    "channel", "revenue",
)
"""Every section of the JSON as rows, told apart by `section`/`value` (all, a group, a period) and
`kind` (overall, stage, email, revenue, spend, holdout, variant, attribution_channel,
attribution_email, unmatched_refund); a row fills the columns of its kind and leaves the others
empty. In a revenue row `total` is net of refunds, beside `gross` and `refunded`."""


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def duration(seconds: int | None) -> str:
    """`93600` → `1d 2h`: two units are enough to read a funnel at a glance."""
    if seconds is None:
        return "–"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


def _sections(report: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    yield "all", "", report
    for group in report.get("groups", []):
        yield f"by {group['by']}", str(group["value"]) if group["value"] is not None else "(none)", group
    for period in report.get("periods", []):
        yield "period", period["period"], period


def print_report(report: Mapping[str, Any], console: Console) -> None:
    """Stages, revenue and emails of the whole report, then the same per group and per period."""
    console.print(f"[bold]{report['funnel']}[/bold] · {report['mode']} · {report['from']} → {report['to']}")
    for section, value, part in _sections(report):
        title = "All leads" if section == "all" else f"{section}: {value}"
        stages = Table(title=title, title_justify="left")
        _name_column(stages, "stage")
        for name in ("reached", "skipped", "from\nprevious", "from\nfirst", "median\ntime", "p90\ntime"):
            _number_column(stages, name)
        for row in part["stages"]:
            stages.add_row(
                row["stage"], str(row["reached"]), str(row["skipped"]), percent(row["conversion_from_previous"]),
                percent(row["conversion_from_first"]), duration(row["time_to_reach"]["median_s"]), duration(row["time_to_reach"]["p90_s"]),
            )
        console.print(stages)
        length = part["funnel_length"]
        console.print(f"overall conversion {percent(part['overall_conversion'])}; funnel length median {duration(length['median_s'])}, p90 {duration(length['p90_s'])}")
        for revenue in part["revenue_by_currency"]:
            console.print(revenue_line(revenue))
        for spend in part.get("spend") or []:
            console.print(spend_line(spend))
        if part["steps"]:
            emails = Table(title=f"{title}: emails", title_justify="left")
            _name_column(emails, "stage")
            _name_column(emails, "step")
            for name in ("sent", "opened", "clicked", "unsub-\nscribed", "buys in\n7 d", "revenue\nin 7 d"):
                _number_column(emails, name)
            for row in part["steps"]:
                emails.add_row(
                    row["stage"], row["step"], *(str(row[k]) for k in ("sent", "opened", "clicked", "unsubscribed", "purchases_7d")),
                    f"{row['revenue_7d']:.2f}",
                )
            console.print(emails)
    _print_comparisons(report, console)


def spend_line(spend: Mapping[str, Any]) -> str:
    """`spend 8609.11 EUR: per lead 4.30, per customer 20.45, return 5.44`, as the admin rounds them."""
    def money(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    return (
        f"spend {spend['spend']:.2f} {spend['currency']}: per lead {money(spend['cost_per_lead'])}, "
        f"per customer {money(spend['cost_per_customer'])}, return {money(spend['return_on_spend'])}"
    )


def revenue_line(revenue: Mapping[str, Any]) -> str:
    """`revenue 4870.00 EUR net (gross 5000.00, refunded 130.00 on 3 orders) from 180 orders …`."""
    currency = revenue["currency"] or ""
    average = "–" if revenue["average_order"] is None else f"{revenue['average_order']:.2f}"
    refunds = ""
    if revenue["refunds"]:
        unmatched = f", {revenue['unmatched_refunded']:.2f} of it for orders never recorded" if revenue["unmatched_refunded"] else ""
        refunds = f" (gross {revenue['gross']:.2f}, refunded {revenue['refunded']:.2f} on {revenue['refunded_orders']} orders{unmatched})"
    return (
        f"revenue {revenue['total']:.2f} {currency} net{refunds} from {revenue['orders']} orders "
        f"(average {average}), {revenue['customers']} customers"
    )


def _name_column(table: Table, header: str) -> None:
    """Stage and step names are never cut: a name too long for its column folds onto the next line."""
    table.add_column(header, justify="left", overflow="fold", ratio=1)


def _number_column(table: Table, header: str) -> None:
    """Figures are never cut: a figure column keeps the width of its longest figure (its header
    breaks where the `\n`s say), and only the name columns give way. When figures could wrap, rich
    narrowed the widest of them first: at 80 columns a week's revenue after an email of 31955.00
    EUR printed as `31955.…`."""
    table.add_column(header, justify="right", no_wrap=True, min_width=4)


def _print_comparisons(report: Mapping[str, Any], console: Console) -> None:
    holdout = report.get("holdout")
    if holdout:
        table = Table(title=f"Holdout: {holdout['treated']} treated, {holdout['held_out']} held out (95 % interval: Newcombe)", title_justify="left")
        for name in ("stage", "treated", "held out", "lift", "95 % interval"):
            table.add_column(name, justify="left" if name == "stage" else "right")
        for row in holdout["stages"]:
            interval = "–" if row["ci95"] is None else f"{percent(row['ci95'][0])} … {percent(row['ci95'][1])}"
            table.add_row(row["stage"], percent(row["treated_conversion"]), percent(row["held_out_conversion"]), percent(row["lift"]), interval)
        console.print(table)
    for row in report.get("variants", []):
        interval = "" if row["ci95"] is None else f", lift {percent(row['lift_vs_first'])} ({percent(row['ci95'][0])} … {percent(row['ci95'][1])})"
        console.print(f"variant {row['step']} = {row['variant']}: {row['converted']}/{row['leads']} → {percent(row['conversion'])}{interval}")
    for row in report.get("unmatched_refunds", []):
        console.print(f"refund of an order never recorded: {row['order_id'] or '(no order id)'}, lead {row['lead_id']}, {row['at']}: {row['amount']:.2f} {row['currency'] or ''}")
    attribution = report.get("attribution")
    if attribution:
        console.print(f"attribution ({attribution['model']}, window {attribution['window']}):")
        for row in attribution["channels"]:
            console.print(f"  channel {row['channel'] or '(none)'}: {row['revenue']:.2f} {row['currency'] or ''}")
        for row in attribution["emails"]:
            label = f"{row['stage']}/{row['step']}" if row["step"] else "(no email clicked)"
            console.print(f"  email {label}: {row['revenue']:.2f} {row['currency'] or ''}")


def report_csv(report: Mapping[str, Any]) -> str:
    """Everything the JSON holds, one row per figure set: every section's overall figures, stages,
    emails, revenue and spend per currency; then holdout, variants and attribution."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for section, value, part in _sections(report):
        where = {"section": section, "value": value}
        length = part["funnel_length"]
        writer.writerow({**where, "kind": "overall", "overall_conversion": part["overall_conversion"], **length})
        for row in part["stages"]:
            writer.writerow({**where, "kind": "stage", **row, **row["time_to_reach"]})
        for row in part["steps"]:
            writer.writerow({**where, "kind": "email", **row})
        for row in part["revenue_by_currency"]:
            writer.writerow({**where, "kind": "revenue", **row})
        for row in part.get("spend") or []:
            writer.writerow({**where, "kind": "spend", **row})
    where = {"section": "all", "value": ""}
    holdout = report.get("holdout")
    for row in (holdout or {}).get("stages", []):
        writer.writerow({**where, "kind": "holdout", **row, **_interval(row)})
    for row in report.get("variants", []):
        writer.writerow({**where, "kind": "variant", **row, "lift": row["lift_vs_first"], **_interval(row)})
    for row in report.get("unmatched_refunds", []):
        writer.writerow({**where, "kind": "unmatched_refund", **row})
    attribution = report.get("attribution") or {}
    for name in ("channels", "emails"):
        for row in attribution.get(name, []):
            writer.writerow({**where, "kind": f"attribution_{name[:-1]}", **row})
    return out.getvalue()


def _interval(row: Mapping[str, Any]) -> dict[str, Any]:
    low, high = row["ci95"] if row.get("ci95") else (None, None)
    return {"ci95_low": low, "ci95_high": high}
