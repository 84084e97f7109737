"""The admin's pages. Each view reads its query, calls one service and renders a template."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from autofunnel.domain.model import Funnel
from autofunnel.domain.statuses import LeadStatus
from autofunnel.errors import AutofunnelError, InvalidInputError
from autofunnel.report_format import duration, percent, report_csv
from autofunnel.services.optin import send_confirmation
from autofunnel.services.credentials import check_user_password
from autofunnel.services.events import record_events
from autofunnel.services.flow_map import flow_map
from autofunnel.services.inputs import parse_events
from autofunnel.services.lead_search import LeadFilter, find_leads
from autofunnel.services.leads import erase_lead, lead_view
from autofunnel.services.overview import flow_summaries
from autofunnel.services.plan import edit_plan
from autofunnel.services.preview import Preview, flow_templates, preview_email, send_test_email
from autofunnel.services.project import project_problems
from autofunnel.services.reload import validation_of
from autofunnel.services.report import EVERYTHING, PARAMETERS, Shown, funnel_report, parse_report_query, seller_today
from autofunnel.services.runtime import Runtime
from autofunnel.services.senders import tracks_opens
from autofunnel.services.spend import add_spend, list_spend, parse_spend, set_spend
from autofunnel.services.status import system_status
from autofunnel.web.admin import charts
from autofunnel.web.admin.security import AdminUser, throttle_failed_logins

admin = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates", static_folder="static")
root = Blueprint("root", __name__)

PERIODS = (7, 30, 90)


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["autofunnel"]
    return rt


@root.get("/")
def home_redirect() -> Response:
    return redirect(url_for("admin.home"))


@admin.app_template_filter("when")
def when(value: str | datetime | None) -> str:
    """A stored moment in the seller's timezone (AUTOFUNNEL_TIMEZONE), to the minute."""
    if not value:
        return "–"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return moment.astimezone(ZoneInfo(runtime().settings.timezone)).strftime("%Y-%m-%d %H:%M")


admin.add_app_template_filter(percent, "percent")
admin.add_app_template_filter(duration, "duration")


@admin.app_template_filter("fact")
def fact(value: Any) -> str:
    """A stored value as a seller reads it: a moment in their timezone, a record as `key: value` pairs."""
    if isinstance(value, dict):
        return " · ".join(f"{key}: {fact(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(fact(item) for item in value)
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        try:
            return when(value)
        except ValueError:
            return value
    return "–" if value is None else str(value)


@admin.app_context_processor
def admin_context() -> dict[str, Any]:
    return {"timezone": runtime().settings.timezone, "flows": runtime().project.flows}


# Signing in ---------------------------------------------------------------------------


@admin.route("/login", methods=["GET", "POST"])
@throttle_failed_logins
def login() -> Any:
    if request.method == "GET":
        return render_template("admin/login.html", email="")
    email = request.form.get("email", "")
    rt = runtime()
    user = check_user_password(rt.db, rt.clock, email, request.form.get("password", ""))
    if user is None:
        return render_template("admin/login.html", email=email, error="Wrong email or password."), 401
    login_user(AdminUser(user))
    target = request.args.get("next", "")
    return redirect(target if target.startswith("/admin") and "//" not in target else url_for("admin.home"))


@admin.post("/logout")
def logout() -> Response:
    logout_user()
    return redirect(url_for("admin.login"))


# Home ---------------------------------------------------------------------------------


@admin.get("/")
@login_required
def home() -> str:
    rt = runtime()
    summaries = flow_summaries(rt, seller_today(rt))
    broker, work = system_status(rt)
    lines = {s.slug: charts.sparkline(s.daily) for s in summaries}
    return render_template("admin/home.html", summaries=summaries, lines=lines, broker=broker, work=work,
                           base_url=rt.settings.base_url, any_leads=any(s.entered for s in summaries))


# A funnel's report --------------------------------------------------------------------


def _report_params() -> dict[str, str]:
    """The report's options from the page's query string; `days` picks a recent period."""
    args = request.args
    params = {key: args[key] for key in PARAMETERS if args.get(key)}
    days = chosen_days(args)
    if days.isdigit():
        today = runtime().clock.now().date()
        params["from"] = (today - timedelta(days=max(int(days), 1) - 1)).isoformat()
        params["to"] = today.isoformat()
    return params


def chosen_days(args: Any) -> str:
    """`7`, `30`, `90` (the last days, today included) or `custom` (the `from`/`to` given)."""
    return args.get("days") or ("custom" if args.get("from") or args.get("to") else "30")


ON_THE_PAGE: Final = Shown(period_times=False, unmatched_refunds=False)
"""The funnel page draws each period's counts, conversion and revenue, not its times, and
the refunds' totals, not their list; its CSV download is the API's whole answer."""


def _report(slug: str, shown: Shown) -> tuple[Funnel, dict[str, Any], dict[str, str]]:
    rt = runtime()
    flow = rt.flow(slug)
    if not isinstance(flow, Funnel):
        abort(404)
    params = _report_params()
    return flow, funnel_report(rt, parse_report_query(slug, params, seller_today(rt)), shown=shown), params


@admin.get("/funnels/<slug>")
@login_required
def funnel(slug: str) -> Any:
    rt = runtime()
    if slug not in rt.project.flows:
        abort(404)
    if not isinstance(rt.project.flows[slug], Funnel):
        return redirect(url_for("admin.flow", slug=slug))
    try:
        flow, report, params = _report(slug, ON_THE_PAGE)
    except InvalidInputError as exc:
        flash(str(exc))
        return redirect(url_for("admin.funnel", slug=slug))
    stages = [(s["stage"], s["reached"]) for s in report["stages"]]
    groups = [
        (g["value"], charts.funnel_bars([(s["stage"], s["reached"]) for s in g["stages"]], bar_height=22, gap=6), g)
        for g in report.get("groups", [])
    ]
    trend = None
    if report.get("interval"):
        # Every period of the range, the quiet ones as 0 entries and no conversion (nobody to convert).
        by_period = {p["period"]: p for p in report.get("periods", [])}
        labels = charts.period_starts(date.fromisoformat(report["from"]), date.fromisoformat(report["to"]), report["interval"])
        found = [by_period.get(label) for label in labels]
        trend = {
            "entries": charts.line_chart(labels, [("entries", [p["stages"][0]["reached"] if p else 0 for p in found])]),
            "conversion": charts.line_chart(labels, [("overall conversion", [p["overall_conversion"] if p else None for p in found])]),
        }
    return render_template(
        "admin/funnel.html", flow=flow, report=report, params=params, args=request.args,
        bars=charts.funnel_bars(stages), chart_height=charts.funnel_height(len(stages)), groups=groups,
        group_height=charts.funnel_height(len(stages), 22, 6), trend=trend, periods=PERIODS,
        csv_url=url_for("admin.funnel_csv", slug=slug, **request.args.to_dict()), days=chosen_days(request.args),
        tracks_opens=tracks_opens(rt.settings, rt.project.flows[slug]),
    )


@admin.get("/funnels/<slug>.csv")
@login_required
def funnel_csv(slug: str) -> Response:
    _, report, _ = _report(slug, EVERYTHING)
    name = f"{slug}-{report['from']}-{report['to']}.csv"
    return Response(report_csv(report), mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})


# The flow map -------------------------------------------------------------------------


@admin.get("/flows/<slug>")
@login_required
def flow(slug: str) -> str:
    rt = runtime()
    days = request.args.get("days", "30")
    return render_template("admin/flow.html", map=flow_map(rt, slug, rt.clock.now().date(), int(days) if days.isdigit() else 30))


# Leads --------------------------------------------------------------------------------


@admin.get("/leads")
@login_required
def leads() -> str:
    args = request.args
    before = args.get("before", "")
    wanted = LeadFilter(
        search=args.get("q", ""), funnel=args.get("funnel", ""), stage=args.get("stage", ""), status=args.get("status", ""),
        step=args.get("step", ""), before_id=int(before) if before.isdigit() else None,
    )
    page = find_leads(runtime(), wanted)
    next_args = {**args.to_dict(), "before": page.next_before_id} if page.next_before_id else None
    return render_template("admin/leads.html", page=page, wanted=wanted, statuses=[str(status) for status in LeadStatus], next_args=next_args)


@admin.get("/leads/<int:lead_id>")
@login_required
def lead(lead_id: int) -> str:
    return render_template("admin/lead.html", lead=lead_view(runtime(), str(lead_id)))


@admin.post("/leads/<int:lead_id>/unsubscribe")
@login_required
def lead_unsubscribe(lead_id: int) -> Response:
    rt = runtime()
    record_events(rt, parse_events({"type": "unsubscribed", "lead_id": lead_id, "properties": {"via": "admin", "by": current_user.info.email}}, rt.clock.now()))
    flash("Unsubscribed: nothing more is sent to this lead.")
    return redirect(url_for("admin.lead", lead_id=lead_id))


@admin.post("/leads/<int:lead_id>/confirmation")
@login_required
def lead_confirmation(lead_id: int) -> Response:
    try:
        queued = send_confirmation(runtime(), str(lead_id))
    except InvalidInputError as exc:
        flash(f"Not sent: {exc}")
    else:
        flash("A new confirmation email is queued; it goes out within seconds." if queued is not None
              else "Not sent: a confirmation email went to this lead a few minutes ago.")
    return redirect(url_for("admin.lead", lead_id=lead_id))


@admin.post("/leads/<int:lead_id>/erase")
@login_required
def lead_erase(lead_id: int) -> Response:
    rt = runtime()
    view = lead_view(rt, str(lead_id))
    if request.form.get("confirm", "").strip().lower() != view["email"]:
        flash("Not erased: type the lead's email address exactly to confirm.")
        return redirect(url_for("admin.lead", lead_id=lead_id))
    erase_lead(rt, str(lead_id))
    flash("Erased: personal data is gone; anonymous counts stay in the reports.")
    return redirect(url_for("admin.lead", lead_id=lead_id))


# Email preview ------------------------------------------------------------------------


def _preview_args() -> dict[str, str]:
    source = request.form if request.method == "POST" else request.args
    return {key: source.get(key, "").strip() for key in ("flow", "template", "lead", "at")}


def _preview(choice: dict[str, str]) -> Preview:
    rt = runtime()
    at = None
    if choice["at"]:
        try:
            at = datetime.fromisoformat(choice["at"]).replace(tzinfo=ZoneInfo(rt.settings.timezone))
        except ValueError:
            raise InvalidInputError(f"{choice['at']!r} is not a moment such as 2026-03-01T09:00", field="at") from None
    return preview_email(rt, choice["flow"], choice["template"], choice["lead"] or None, at)


@admin.get("/preview")
@login_required
def preview() -> str:
    rt = runtime()
    choice = _preview_args()
    choice["flow"] = choice["flow"] if choice["flow"] in rt.project.flows else next(iter(sorted(rt.project.flows)), "")
    templates = flow_templates(rt, choice["flow"]) if choice["flow"] else []
    if choice["template"] not in templates:
        choice["template"] = templates[0] if templates else ""
    shown, error = None, None
    if choice["template"]:
        try:
            shown = _preview(choice)
        except AutofunnelError as exc:
            error = str(exc)
    return render_template("admin/preview.html", choice=choice, templates=templates, preview=shown, error=error,
                           raw_url=url_for("admin.preview_raw", **choice))


@admin.get("/preview/raw")
@login_required
def preview_raw() -> Response:
    """The email's HTML alone, for the preview's frames: sandboxed, no script, framed only by the admin."""
    response = Response(_preview(_preview_args()).html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        "sandbox; default-src 'none'; img-src * data:; style-src 'unsafe-inline'; font-src *; frame-ancestors 'self'"
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@admin.post("/preview/send")
@login_required
def preview_send() -> Response:
    choice = _preview_args()
    to = request.form.get("to", "")
    try:
        send_test_email(runtime(), _preview(choice), to)
    except AutofunnelError as exc:
        flash(f"Not sent: {exc}")
    else:
        flash(f"Test sent to {to.strip()}, marked [TEST]; it counts in no report.")
    return redirect(url_for("admin.preview", **choice))


# Ad spend -----------------------------------------------------------------------------


@admin.route("/spend", methods=["GET", "POST"])
@login_required
def spend() -> Any:
    rt = runtime()
    form = request.form
    if request.method == "POST":
        try:
            entry = parse_spend(form.get("channel"), form.get("amount"), form.get("date"), form.get("currency") or None)
            total = add_spend(rt, entry)
        except InvalidInputError as exc:
            return render_template("admin/spend.html", entries=list_spend(rt), error=str(exc), form=form, today=rt.clock.now().date()), 400
        flash(f"Added: {entry.channel} on {entry.day} now totals {total} {entry.currency}.")
        return redirect(url_for("admin.spend"))
    return render_template("admin/spend.html", entries=list_spend(rt), error=None, form={}, today=rt.clock.now().date())


@admin.post("/spend/<int:entry_id>")
@login_required
def spend_edit(entry_id: int) -> Response:
    try:
        entry = set_spend(runtime(), entry_id, request.form.get("amount"))
    except AutofunnelError as exc:
        flash(f"Not changed: {exc}")
    else:
        flash(f"{entry.channel} on {entry.day}: " + ("removed." if entry.amount == 0 else f"now {entry.amount} {entry.currency}."))
    return redirect(url_for("admin.spend"))


# The project's files ------------------------------------------------------------------


@admin.get("/files")
@login_required
def files() -> str:
    rt = runtime()
    result = validation_of(rt.project.root)
    plan = edit_plan(rt.db, dict(result.flows)) if result.ok else None
    return render_template("admin/files.html", result=result, problems=project_problems(result), root=rt.project.root, plan=plan)
