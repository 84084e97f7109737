"""The admin's pages: each view reads its input, calls one service and renders a template.

Every figure on a report page is the report service's (the one behind
GET /api/v1/reports/<funnel>); templates format numbers, they compute none.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from limits import parse

from autofunnel.domain.model import Funnel
from autofunnel.errors import AutofunnelError, InvalidInputError
from autofunnel.report_format import duration, percent, report_csv
from autofunnel.services.credentials import check_user_password
from autofunnel.services.overview import overview
from autofunnel.services.project import validate_project
from autofunnel.domain.report import ATTRIBUTION_MODELS
from autofunnel.services.report import GROUPINGS, INTERVALS, MODES, funnel_report, parse_report_query
from autofunnel.services.runtime import Runtime
from autofunnel.services.spend import add_spend, delete_spend, list_spend, parse_spend, set_spend
from autofunnel.services.status import system_status
from autofunnel.web.admin import charts
from autofunnel.web.admin.auth import AdminUser

admin = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates", static_folder="static")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
PERIODS = ("7", "30", "90", "custom")


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["autofunnel"]
    return rt


@admin.before_request
def check_csrf() -> None:
    """Every admin POST carries its form's CSRF token (the public links and the API are other blueprints)."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf: CSRFProtect = current_app.extensions["csrf"]
        csrf.protect()


@admin.after_request
def security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "admin.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@admin.errorhandler(CSRFError)
def csrf_refused(error: CSRFError) -> tuple[str, int]:
    return render_template("admin/error.html", title="Form expired", message=f"{error.description} Reload the page and try again."), 400


@admin.app_template_filter("pct")
def _pct(value: float | None) -> str:
    return percent(value)


@admin.app_template_filter("dur")
def _dur(seconds: int | None) -> str:
    return duration(seconds)


@admin.app_template_filter("money")
def _money(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}"


@admin.app_template_filter("local")
def _local(moment: datetime | None) -> str:
    """A stored UTC moment in the seller's time zone (AUTOFUNNEL_TIMEZONE)."""
    if moment is None:
        return "–"
    return moment.astimezone(ZoneInfo(runtime().settings.timezone)).strftime("%Y-%m-%d %H:%M")


@admin.app_context_processor
def _globals() -> dict[str, Any]:
    return {"timezone": runtime().settings.timezone}


# Login -----------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path inside the admin: a login link cannot send the seller elsewhere."""
    if target and target.startswith("/admin") and not urlsplit(target).netloc and "\\" not in target:
        return target
    return url_for("admin.home")


def _login_allowed(email: str) -> bool:
    """Count this attempt against the address's and the account's limits; False once either is used up."""
    per_ip, per_account = current_app.config["AUTOFUNNEL_LOGIN_LIMITS"]
    strategy = current_app.extensions["autofunnel_login_limiter"].limiter
    ip_ok = strategy.hit(parse(per_ip), "login-ip", request.remote_addr or "unknown")
    account_ok = strategy.hit(parse(per_account), "login-account", email.strip().lower())
    return bool(ip_ok and account_ok)


@admin.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return render_template("admin/login.html", next=request.args.get("next", ""), email="")
    email = request.form.get("email", "")
    if not _login_allowed(email):
        return render_template("admin/login.html", error="Too many attempts. Wait a few minutes and try again.", email=email, next=""), 429
    rt = runtime()
    info = check_user_password(rt.db, rt.clock, email, request.form.get("password", ""))
    if info is None:
        return render_template("admin/login.html", error="Wrong email or password.", email=email, next=request.form.get("next", "")), 401
    login_user(AdminUser(info))
    return redirect(_safe_next(request.form.get("next")))


@admin.post("/logout")
@login_required
def logout() -> Response:
    logout_user()
    return redirect(url_for("admin.login"))


# Home ------------------------------------------------------------------------------------


@admin.get("/")
@login_required
def home() -> str:
    rt = runtime()
    summary = overview(rt)
    broker, work = system_status(rt)
    sparks = {flow.slug: charts.polyline([float(n) for n in flow.daily], 120, 28) for flow in summary.flows}
    return render_template(
        "admin/home.html", summary=summary, sparks=sparks, broker=broker, work=work,
        quiet=not any(flow.entered for flow in summary.flows), base_url=rt.settings.base_url,
    )


# A funnel's report -------------------------------------------------------------------------


def _report_params(today: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The report's parameters from the page's form (period presets become from/to), and the form's values."""
    args = request.args
    period = args.get("period") or ("custom" if args.get("from") or args.get("to") else "30")
    if period not in PERIODS:
        raise InvalidInputError(f"period must be one of {', '.join(PERIODS)}", field="period")
    params = {name: args.get(name, "") for name in ("mode", "by", "interval", "attribution") if args.get(name)}
    if period == "custom":
        params.update({name: args[name] for name in ("from", "to") if args.get(name)})
    else:
        params["from"] = (today - timedelta(days=int(period) - 1)).isoformat()
        params["to"] = today.isoformat()
    return params, {"period": period, **params}


@admin.get("/funnels/<slug>")
@login_required
def funnel(slug: str) -> Any:
    rt = runtime()
    flow = rt.project.flows.get(slug)
    if flow is None:
        abort(404)
    if not isinstance(flow, Funnel):
        return render_template("admin/error.html", title=slug, message="This is a sequence: reports are about funnels."), 404
    today = rt.clock.now().date()
    try:
        params, form = _report_params(today)
        report = funnel_report(rt, parse_report_query(slug, params, today))
    except AutofunnelError as exc:
        return render_template("admin/error.html", title=slug, message=str(exc)), 400
    if request.args.get("format") == "csv":
        response = make_response(report_csv(report))
        response.headers["Content-Type"] = "text/csv; charset=utf-8"
        response.headers["Content-Disposition"] = f'attachment; filename="{slug}-{report["from"]}-{report["to"]}.csv"'
        return response
    groups = [(group, charts.funnel_chart(group["stages"], width=260, bar_height=22, gap=6)) for group in report.get("groups", [])]
    trend = charts.trend_chart(report["periods"]) if report.get("periods") else None
    return render_template(
        "admin/funnel.html", flow=flow, report=report, form=form, chart=charts.funnel_chart(report["stages"]),
        groups=groups, trend=trend, modes=MODES, intervals=INTERVALS, groupings=GROUPINGS, attributions=ATTRIBUTION_MODELS,
        csv_args={**form, "format": "csv"},
    )


# Spend -------------------------------------------------------------------------------------


@admin.route("/spend", methods=["GET", "POST"])
@login_required
def spend() -> Any:
    rt = runtime()
    error = None
    values = {"channel": "", "amount": "", "date": rt.clock.now().date().isoformat(), "currency": "EUR"}
    if request.method == "POST":
        values = {name: request.form.get(name, "") for name in values}
        try:
            entry = parse_spend(values["channel"], values["amount"], values["date"], values["currency"] or None)
            total = add_spend(rt, entry)
        except AutofunnelError as exc:
            error = str(exc)
        else:
            flash(f"Added: {entry.channel} {entry.day} now {total} {entry.currency}.")
            return redirect(url_for("admin.spend"))
    return render_template("admin/spend.html", entries=list_spend(rt), values=values, error=error), 400 if error else 200


@admin.post("/spend/<int:entry_id>")
@login_required
def spend_change(entry_id: int) -> Any:
    rt = runtime()
    if request.form.get("action") == "delete":
        found = delete_spend(rt, entry_id)
        flash("Entry deleted." if found else "That entry was already gone.")
        return redirect(url_for("admin.spend"))
    try:
        found = set_spend(rt, entry_id, request.form.get("amount", ""))
    except AutofunnelError as exc:
        flash(f"Not changed: {exc}")
        return redirect(url_for("admin.spend"))
    flash("Amount changed." if found else "That entry was already gone.")
    return redirect(url_for("admin.spend"))


# Files -------------------------------------------------------------------------------------


@admin.get("/files")
@login_required
def files() -> str:
    rt = runtime()
    root = Path(rt.settings.project_dir)
    result = validate_project(root)
    problems = [
        {"file": _relative(problem.path, root), "line": problem.line, "message": problem.message, "severity": problem.severity}
        for problem in result.problems
    ]
    return render_template("admin/files.html", result=result, problems=problems, root=root.resolve())


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
