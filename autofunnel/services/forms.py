"""The hosted subscribe form (`GET|POST /f/<funnel>`): what its page shows and what a submission does.

A submission is one call to `leads.subscribe`, with the consent proof the
form collected (when, which form, the IP, the exact text agreed to). The form
carries no CSRF token: the embed snippet posts from the seller's own site,
which cannot hold one, and the public routes have no session for a forged
request to ride on. The defences against abuse are the honeypot field (a bot
that fills it is answered like a person and nothing is written), the per-IP
rate limit (`web.limits`) and double opt-in: an address someone else typed in
gets one confirmation email, and is erased if never confirmed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

from autofunnel.config import Settings
from autofunnel.domain.model import Funnel
from autofunnel.errors import InvalidInputError, NotFoundError
from autofunnel.services.inputs import SubscribeInput, normalize_email
from autofunnel.services.leads import subscribe
from autofunnel.services.optin import consent_text
from autofunnel.services.project import load_project
from autofunnel.services.runtime import Runtime

HONEYPOT = "website"
"""The field people never see (hidden by CSS) and form-filling bots do fill."""

SOURCE_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "referrer")
"""Carried from the page's query string (and the referrer) through hidden fields into the lead's `source`."""


@dataclass(frozen=True)
class FormPage:
    slug: str
    title: str
    consent_text: str
    thanks: str | None
    redirect: str | None
    double_opt_in: bool


def form_page(rt: Runtime, slug: str) -> FormPage:
    """The funnel's form; NotFoundError for an unknown funnel or a sequence (sequences start on events)."""
    flow = rt.project.flows.get(slug)
    if not isinstance(flow, Funnel):
        raise NotFoundError(f"no funnel {slug!r}", field="funnel", code="unknown_funnel")
    double_opt_in = flow.double_opt_in if flow.double_opt_in is not None else rt.settings.double_opt_in
    return FormPage(flow.slug, flow.title, consent_text(rt, flow), flow.form_thanks, flow.form_redirect, double_opt_in)


def source_of(values: Mapping[str, str]) -> dict[str, str]:
    """The lead's `source` from the form's hidden fields: known keys only, trimmed, at most 500 characters."""
    return {key: value.strip()[:500] for key in SOURCE_FIELDS if (value := values.get(key, "")) and value.strip()}


def subscribe_by_form(rt: Runtime, slug: str, values: Mapping[str, str], ip: str | None) -> bool:
    """Subscribe from a form post; False when the honeypot was filled (nothing written, answered like success)."""
    page = form_page(rt, slug)
    if values.get(HONEYPOT, "").strip():
        return False
    email = normalize_email(values.get("email", ""))
    if values.get("consent") != "yes":
        raise InvalidInputError("please tick the box to agree to receive emails", field="consent", code="required")
    first_name = (values.get("first_name") or "").strip()[:200] or None
    now = rt.clock.now()
    consent = {
        "at": now.isoformat().replace("+00:00", "Z"),
        "via": "form",
        "form": f"/f/{page.slug}",
        "ip": ip,
        "text": page.consent_text,
    }
    data = SubscribeInput(email=email, funnel=page.slug, at=now, first_name=first_name, source=source_of(values))
    subscribe(rt, data, consent=consent)
    return True


def embed_snippet(settings: Settings, slug: str) -> str:
    """`autofunnel form FUNNEL`: an HTML form for the seller's own site that posts to `/f/<funnel>`.

    It works without script; the hidden honeypot field must stay in it. Source
    (utm_*) can be added as hidden fields by the seller's page.
    """
    project = load_project(settings.project_dir)
    flow = project.flows.get(slug)
    if not isinstance(flow, Funnel):
        raise NotFoundError(f"no funnel {slug!r} in {settings.project_dir}", field="funnel", code="unknown_funnel")
    text = escape(flow.consent_text or settings.consent_text)
    action = escape(f"{settings.base_url}/f/{flow.slug}")
    return f"""<form method="post" action="{action}" accept-charset="utf-8">
  <label>Email <input type="email" name="email" required autocomplete="email"></label>
  <label>First name <input type="text" name="first_name" autocomplete="given-name"></label>
  <div style="position:absolute;left:-10000px" aria-hidden="true"><input type="text" name="{HONEYPOT}" tabindex="-1" autocomplete="off"></div>
  <label><input type="checkbox" name="consent" value="yes" required> {text}</label>
  <button type="submit">Subscribe</button>
</form>
"""
