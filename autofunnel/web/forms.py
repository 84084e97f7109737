"""Public subscribe forms and double opt-in pages: `GET|POST /f/<funnel>`, `GET|POST /confirm/<token>`.

Thin shells over `services.forms` and `services.optin`. `GET` never changes
anything (mail scanners and link previews fetch every URL). Neither form
carries a CSRF token, on purpose: the embedded form posts from the seller's
site and the confirm link's signed token is the authority (see
`services.forms`); if a global CSRF guard is added for the admin, exempt this
blueprint. No CORS header is sent: a plain HTML form post needs none, and
scripts on other sites get no readable answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request, url_for
from jinja2 import TemplateNotFound

from autofunnel.domain.statuses import LeadStatus
from autofunnel.errors import InvalidInputError
from autofunnel.services.forms import SOURCE_FIELDS, FormPage, form_page, subscribe_by_form
from autofunnel.services.optin import ConfirmState, confirm, confirm_state, resend_from_token
from autofunnel.web.api import runtime
from autofunnel.web.errors import render_page
from autofunnel.web.limits import limiter

forms = Blueprint("forms", __name__, template_folder="templates")

DEFAULT_THANKS = "Thank you! Check your inbox: we sent you an email to confirm your address."
DEFAULT_THANKS_SINGLE = "Thank you! You are subscribed; your first email is on its way."


def _form_limit() -> str:
    return runtime().settings.form_rate_limit


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def _hidden_fields(values: Mapping[str, str]) -> list[tuple[str, str]]:
    """utm_* and the referrer to carry through the form: from the post, else the page's query and Referer."""
    fields = []
    for name in SOURCE_FIELDS:
        value = values.get(name) or (request.referrer if name == "referrer" and request.method == "GET" else None)
        if value and name == "referrer" and urlsplit(value).netloc == request.host:
            continue  # our own page is no referrer
        if value:
            fields.append((name, value[:500]))
    return fields


def _page(page: FormPage, values: Mapping[str, str], error: str | None = None, status: int = 200) -> Response:
    context = {
        "funnel": {"slug": page.slug, "title": page.title, "double_opt_in": page.double_opt_in}, "consent_text": page.consent_text,
        "action": url_for("forms.form_post", funnel=page.slug), "error": error,
        "values": {name: values.get(name, "") for name in ("email", "first_name", "consent")},
        "hidden_fields": _hidden_fields(values),
    }
    renderer = runtime().renderer
    try:
        html = renderer.environment.get_template(f"{page.slug}/form.html").render(context)
    except TemplateNotFound:
        html = render_template("form.html", **context)
    return _no_store(Response(html, status=status, mimetype="text/html"))


@forms.get("/f/<funnel>")
def form_get(funnel: str) -> Response:
    return _page(form_page(runtime(), funnel), request.args)


@forms.post("/f/<funnel>")
@limiter.limit(_form_limit)
def form_post(funnel: str) -> Response:
    rt = runtime()
    page = form_page(rt, funnel)
    try:
        subscribe_by_form(rt, funnel, request.form, request.remote_addr)
    except InvalidInputError as exc:
        return _page(page, request.form, str(exc), status=400)
    if page.redirect:
        return _no_store(redirect(page.redirect, 303))
    return _no_store(render_page(page.title, page.thanks or (DEFAULT_THANKS if page.double_opt_in else DEFAULT_THANKS_SINGLE)))


@forms.get("/confirm/<token>")
def confirm_get(token: str) -> Response:
    """Shows what the link confirms and one button; changes nothing."""
    return _confirm_page(token, confirm_state(runtime(), token), posted=False)


@forms.post("/confirm/<token>")
def confirm_post(token: str) -> Response:
    return _confirm_page(token, confirm(runtime(), token), posted=True)


@forms.post("/confirm/<token>/again")
@limiter.limit("3 per hour")
def confirm_again(token: str) -> Response:
    state = resend_from_token(runtime(), token)
    if state.status != LeadStatus.PENDING:
        return _confirm_page(token, state, posted=False)
    return _no_store(render_page("A new email is on its way", f"We sent a new confirmation link to {state.masked_email}."))


def _confirm_page(token: str, state: ConfirmState, posted: bool) -> Response:
    if state.status == LeadStatus.ACTIVE or (state.status != LeadStatus.PENDING and posted):
        return _no_store(render_page("You're confirmed", f"{state.masked_email} is confirmed for {state.title}. Thank you!"))
    if state.status != LeadStatus.PENDING:
        return _no_store(render_page("Nothing to confirm", f"{state.masked_email} cannot be confirmed any more ({state.status})."))
    if state.expired:
        return _no_store(render_page(
            "This link has expired", f"Confirmation links work for a limited time. We can send a new one to {state.masked_email}.",
            status=410, action=url_for("forms.confirm_again", token=token), button="Send me a new link",
        ))
    return _no_store(render_page(
        "Confirm your subscription", f"Confirm that {state.masked_email} wants emails about {state.title}.",
        action=url_for("forms.confirm_post", token=token), button="Confirm",
    ))
