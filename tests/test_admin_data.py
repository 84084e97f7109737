"""The services behind the admin's flow map, leads list, lead page and email preview,
on leads moved through the yoga funnel by the API and the real scheduler (tests/admin_site.py).

Each figure is held to what another part of the system says about the same leads:
waiting counts to the lead API's enrollments, email figures to the report API,
the preview to the email a real send put on the wire.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from datetime import timedelta
from email import message_from_bytes, policy
from html import escape, unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from admin_site import NOW, Site, build_site
from autofunnel.domain.model import Funnel
from autofunnel.services.flow_map import flow_map
from autofunnel.services.lead_search import LeadFilter, find_leads
from autofunnel.services.leads import lead_view
from autofunnel.services.preview import list_templates, preview_email, preview_unsubscribe_url, send_test_email
from autofunnel.services.scheduler import run_tick
from autofunnel.store.models import CohortTally, Delivery, Event, TimelineEntry
from smtp_sink import SmtpSink

pytestmark = pytest.mark.db

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15"
EMAILS = [f"{channel}{i}@example.com" for channel, count in {"instagram": 6, "google": 4, "newsletter": 2}.items() for i in range(count)]


@pytest.fixture
def site(project_dir: Path, runtime_factory: Any, tmp_path: Path) -> Site:
    return build_site(project_dir, runtime_factory, tmp_path / "outbox")


def _click_link(site: Site, to: str, template_subject_part: str) -> str:
    """The tracked link of the email to `to` whose subject contains the given words."""
    for path in sorted(site.outbox.glob("*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        if to in str(message["To"]) and template_subject_part in str(message["Subject"]):
            html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
            return next(urlsplit(u).path for u in re.findall(r'href="([^"]+)"', html) if "/t/c/" in u)
    raise AssertionError(f"no email to {to} about {template_subject_part!r}")


def _waiting_from_the_lead_api(site: Site, flow: str) -> Counter[tuple[str, str]]:
    waiting: Counter[tuple[str, str]] = Counter()
    for email in EMAILS:
        for enrollment in site.api_get(f"/api/v1/leads/{email}")["enrollments"]:
            if enrollment["flow"] == flow and enrollment["status"] == "active":
                waiting[(enrollment["stage"] or "", enrollment["step"])] += 1
    return waiting


def through(runtime_factory: Any, sink: SmtpSink) -> Any:
    """The same runtimes, sending to the SMTP sink instead of the site's outbox folder."""
    return lambda project, _smtp_url, clock, **settings: runtime_factory(project, sink.url(), clock, **settings)


# The flow map --------------------------------------------------------------------------


def test_the_flow_map_counts_who_waits_where_and_each_emails_results_as_the_report_does(site: Site) -> None:
    client = site.app.test_client()
    site.clock.advance(timedelta(minutes=5))
    assert client.get(_click_link(site, "google2@", "first week"), headers={"User-Agent": BROWSER}).status_code == 302
    assert client.get(_click_link(site, "google3@", "first week"), headers={"User-Agent": "python-requests/2.31"}).status_code == 302
    site.api_post("/api/v1/events", {"type": "cart_updated", "email": "google3@example.com", "properties": {"items": [], "value": 5}})

    yoga = flow_map(site.rt, "yoga", site.clock.now().date())
    assert [stage.name for stage in yoga.stages] == ["lead", "tripwire", "customer", "vip"]
    found = Counter({(stage.name, step.id): step.waiting for stage in yoga.stages for step in stage.steps if step.waiting})
    assert found == _waiting_from_the_lead_api(site, "yoga") and sum(found.values()) == 12

    report = site.api_get("/api/v1/reports/yoga")
    sends = {(stage.name, step.id): (step.sent, step.opened, step.clicked) for stage in yoga.stages for step in stage.steps if step.kind == "send"}
    assert sends == {(row["stage"], row["step"]): (row["sent"], row["opened"], row["clicked"]) for row in report["steps"]}
    assert sends[("lead", "welcome")] == (12, 0, 0)
    assert sends[("lead", "tripwire-offer")] == (6, 1, 1), "one person's click (and the open it implies); the scanner's counts nowhere"

    lead = yoga.stages[0]
    labels = {step.id: (step.kind, step.label, step.condition, step.deadline) for step in lead.steps}
    assert labels["welcome"][:2] == ("send", "send welcome")
    assert labels["wait-after-welcome"][:2] == ("wait", "wait 1d")
    assert labels["tripwire-offer"][3] == "starts deadline tripwire (2d)"
    assert labels["tripwire-reminder"][2] == "not (deadline tripwire passed)"
    assert labels["wait-until-tripwire"][:2] == ("wait", "wait until deadline tripwire")
    assert [step.kind for step in yoga.stages[1].steps] == ["send", "wait", "send", "wait", "notify"]

    cart = flow_map(site.rt, "abandoned-cart", site.clock.now().date())
    assert [stage.name for stage in cart.stages] == [""]
    assert {step.id: step.waiting for step in cart.stages[0].steps if step.waiting} == {"wait-first": 1}
    assert [step.sent for step in cart.stages[0].steps if step.kind == "send"] == [0, 0, 0]


# The leads list ------------------------------------------------------------------------


def _emails(site: Site, **wanted: Any) -> list[str]:
    return [row.email for row in find_leads(site.rt, LeadFilter(**wanted)).rows]


def test_leads_are_found_by_email_prefix_first_name_and_tag_newest_first(site: Site) -> None:
    assert _emails(site, search="GOOGLE") == [f"google{i}@example.com" for i in (3, 2, 1, 0)]
    assert _emails(site, search="google1@ex") == ["google1@example.com"]
    assert _emails(site, search="lead3") == _emails(site, search="Lead3") == ["instagram2@example.com"]
    assert _emails(site, search="yoga-fan") == ["newsletter0@example.com", "google0@example.com", "instagram0@example.com"]
    assert _emails(site, search="yoga") == [], "a tag matches whole, never a part of it"
    assert _emails(site, search="nobody") == []


def test_leads_are_filtered_by_funnel_stage_status_and_the_step_they_wait_on(site: Site) -> None:
    buyers = [f"{channel}{i}@example.com" for channel, count in {"instagram": 6, "google": 4, "newsletter": 2}.items() for i in range(count // 2)]
    assert sorted(_emails(site, funnel="yoga", stage="tripwire")) == sorted(buyers)
    assert sorted(_emails(site, funnel="yoga", stage="customer")) == ["google0@example.com", "instagram0@example.com", "newsletter0@example.com"]
    assert len(_emails(site, funnel="yoga")) == 12 and _emails(site, funnel="abandoned-cart") == []
    assert _emails(site, funnel="yoga", stage="nope") == [] and _emails(site, status="nope") == []
    assert sorted(_emails(site, search="instagram", funnel="yoga", stage="tripwire")) == [f"instagram{i}@example.com" for i in range(3)]

    site.api_post("/api/v1/events", {"type": "unsubscribed", "email": "google3@example.com"})
    assert _emails(site, status="unsubscribed") == ["google3@example.com"]
    assert len(_emails(site, status="active")) == 11

    waiting = _waiting_from_the_lead_api(site, "yoga")
    for (stage, step), count in waiting.items():
        listed = _emails(site, funnel="yoga", step=step)
        assert len(listed) == count and listed == _emails(site, funnel="yoga", stage=stage, step=step)
        for email in listed:
            assert any(e["step"] == step and e["status"] == "active" for e in site.api_get(f"/api/v1/leads/{email}")["enrollments"])
    assert _emails(site, funnel="yoga", step="no-such-step") == []

    row = find_leads(site.rt, LeadFilter(funnel="yoga", stage="customer")).rows[0]
    assert [(s.funnel, s.stage) for s in row.stages] == [("yoga", "customer")]
    assert row.entered_at == NOW - timedelta(days=10) and row.status == "active" and row.tags == ("yoga-fan",)


def test_pages_follow_by_keyset_under_a_filter_and_say_when_another_follows(site: Site) -> None:
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        page = find_leads(site.rt, LeadFilter(funnel="yoga", before_id=before), page_size=5)
        pages += 1
        seen += [row.id for row in page.rows]
        if not page.has_next:
            break
        before = page.next_before_id
    assert pages == 3 and len(seen) == len(set(seen)) == 12 and seen == sorted(seen, reverse=True)
    searched = find_leads(site.rt, LeadFilter(search="instagram"), page_size=4)
    rest = find_leads(site.rt, LeadFilter(search="instagram", before_id=searched.next_before_id), page_size=4)
    assert [r.email for r in searched.rows + rest.rows] == [f"instagram{i}@example.com" for i in range(5, -1, -1)] and not rest.has_next


# The lead page -------------------------------------------------------------------------


def test_the_lead_view_holds_what_the_lead_page_shows(site: Site) -> None:
    view = lead_view(site.rt, "instagram5@example.com")
    assert view["status"] == "active" and view["consent"] and view["first_name"] == "Lead6"
    assert view["fields"] == {} and view["tags"] == []
    assert [(d["flow"], d["name"]) for d in view["deadlines"]] == [("yoga", "tripwire")]
    emails = [(d["template"], d["status"]) for d in view["deliveries"] if d["template"] != "confirm"]
    assert emails == [("welcome", "sent"), ("tripwire-offer", "sent")], "the double opt-in email, if any, has its own row"
    assert view["funnels"][0]["stage"] == "lead"
    assert any(entry["reason"] for entry in view["timeline"])


# The email preview ---------------------------------------------------------------------


def _destination(site: Site, url: str, moment: Any) -> str:
    """Where a link of the sent email leads at `moment`, as the preview writes it: an offer's
    page then, and the preview's inert unsubscribe link."""
    path = urlsplit(url).path
    if path.startswith("/o/"):
        _, slug, name, _ = site.rt.tokens.load("offer", path[3:])
        funnel = site.rt.project.flows[slug]
        assert isinstance(funnel, Funnel)
        deadline = lead_view(site.rt, "tokyo@example.com")["deadlines"][0]["at"]
        offer = funnel.offers[name]
        return offer.url if moment.isoformat().replace("+00:00", "Z") < deadline else offer.expired_url
    if path.startswith("/u/"):
        return preview_unsubscribe_url(site.rt)
    return url


def _as_previewed(site: Site, raw_html: str, moment: Any) -> str:
    """A sent email's HTML as the preview shows it: tracked links turned back into where they
    lead at `moment`, the open pixel gone, the unsubscribe link and countdown image neutral."""

    def untracked(match: re.Match[str]) -> str:
        _, url = site.rt.tokens.load("click", match.group(1))
        return f'href="{escape(_destination(site, url, moment), quote=True)}"'

    html = re.sub(r'<img src="[^"]*/t/o/[^"]+"[^>]*>', "", raw_html)
    html = re.sub(r'href="http://testserver/t/c/([^"]+)"', untracked, html)
    html = re.sub(r'href="(http://testserver/u/[^"]+)"', lambda m: f'href="{_destination(site, unescape(m.group(1)), moment)}"', html)
    return re.sub(r'src="http://testserver/countdown/[^"]+\.gif"', 'src="COUNTDOWN"', html)


def test_the_preview_is_the_email_a_real_send_put_on_the_wire_less_its_tracking(project_dir: Path, runtime_factory: Any, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    site = build_site(project_dir, through(runtime_factory, smtp_sink), tmp_path / "outbox")
    lead = site.api_post("/api/v1/subscribe", {"email": "tokyo@example.com", "funnel": "yoga", "first_name": "Yui", "timezone": "Asia/Tokyo"})["lead_id"]
    site.api_post("/api/v1/events", {"type": "confirmed", "lead_id": lead})
    run_tick(site.rt)
    site.clock.advance(timedelta(days=1))
    run_tick(site.rt)
    (sent,) = [m for m in smtp_sink.messages if "tokyo@example.com" in m.recipients and "first week" in str(m.message["Subject"])]
    delivery = next(d for d in lead_view(site.rt, "tokyo@example.com")["deliveries"] if d["template"] == "tripwire-offer")
    moment = site.clock.now()
    assert delivery["sent_at"] == moment.isoformat().replace("+00:00", "Z")

    shown = preview_email(site.rt, "yoga", "tripwire-offer", "Tokyo@Example.com", moment)
    assert (shown.to, shown.stage, shown.sample, shown.notes) == ("tokyo@example.com", "lead", False, ())
    assert shown.subject == sent.message["Subject"] == "Yui, ready for your first week of yoga?"
    html = sent.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "/t/c/" in html and "/t/o/" in html, "the real email is tracked"
    assert "JST" in shown.html, "the deadline is shown in the lead's timezone, as in the email"
    countdown = re.search(r'src="data:image/gif;base64,([^"]+)"', shown.html)
    assert countdown is not None and base64.b64decode(countdown.group(1)).startswith((b"GIF87a", b"GIF89a"))
    assert re.sub(r'src="data:image/gif;base64,[^"]+"', 'src="COUNTDOWN"', shown.html) == _as_previewed(site, html, moment).replace("\r\n", "\n")
    text = sent.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    text = re.sub(r"http://testserver/[ou]/[A-Za-z0-9_.-]+", lambda m: _destination(site, m.group(0), moment), text.replace("\r\n", "\n"))
    # The same words in the same order; where lines wrap at 78 differs, since a tracked URL is longer than its destination.
    assert shown.text.split() == text.split()

    later = preview_email(site.rt, "yoga", "tripwire-offer", "tokyo@example.com", moment + timedelta(days=3))
    assert "https://shop.example/mini\"" in later.html and "coupon=EARLY" not in later.html, "after the deadline the offer leads to its expired page"
    assert "coupon=EARLY" in shown.html


def test_a_test_send_arrives_marked_and_is_recorded_and_counted_nowhere(project_dir: Path, runtime_factory: Any, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    site = build_site(project_dir, through(runtime_factory, smtp_sink), tmp_path / "outbox")

    def written() -> tuple[int, ...]:
        with site.rt.db.read() as session:
            return tuple(session.scalar(select(func.count()).select_from(table)) or 0 for table in (Delivery, CohortTally, TimelineEntry, Event))

    before, report = written(), site.api_get("/api/v1/reports/yoga")
    smtp_sink.clear()
    message_id = send_test_email(site.rt, preview_email(site.rt, "yoga", "tripwire-offer", "instagram5@example.com"), "me@shop.example")
    (received,) = smtp_sink.messages
    assert received.recipients == ("me@shop.example",) and received.message["Message-ID"] == message_id
    assert received.message["Subject"] == "[TEST] Lead6, ready for your first week of yoga?"
    assert received.message["List-Unsubscribe"] is None
    html = received.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "/t/c/" not in html and "/t/o/" not in html and "/o/" not in urlsplit(html).path
    assert written() == before and site.api_get("/api/v1/reports/yoga") == report

    sample = preview_email(site.rt, "abandoned-cart", "cart-1")
    assert sample.sample and "Yoga mat" in sample.html and sample.stage is None
    send_test_email(site.rt, sample, "me@shop.example")
    assert len(smtp_sink.messages) == 2 and written() == before


def test_list_templates_names_every_flows_emails_and_the_steps_sending_them(site: Site) -> None:
    listed = {flow.slug: flow for flow in list_templates(site.rt)}
    assert list(listed) == ["abandoned-cart", "yoga"]
    yoga = {t.name: (t.stage, t.steps) for t in listed["yoga"].templates}
    assert yoga["tripwire-offer"] == ("lead", ("tripwire-offer",))
    assert yoga["call-lead"] == ("tripwire", ("notify-call-lead",))
    assert [t.name for t in listed["abandoned-cart"].templates] == ["cart-1", "cart-2", "cart-last-call"]


def test_project_problems_are_validates_as_data(project_dir: Path) -> None:
    from autofunnel.services.project import FileProblem, project_problems, validate_project

    assert project_problems(validate_project(project_dir)) == ()
    flow = project_dir / "funnels" / "yoga.yml"
    flow.write_text(flow.read_text().replace("{send: thanks-mini,", "{send: thanks-mni,"))
    (problem,) = [p for p in project_problems(validate_project(project_dir)) if p.severity == "error"]
    assert problem == FileProblem("funnels/yoga.yml", problem.line, problem.message, "error")
    assert "unknown template 'thanks-mni'" in problem.message and "did you mean 'thanks-mini'" in problem.message
    assert flow.read_text().splitlines()[problem.line - 1].strip().startswith("- {send: thanks-mni,")


def test_the_files_validation_is_done_again_only_after_an_edit(project_dir: Path) -> None:
    from autofunnel.services.reload import validation_of

    first = validation_of(project_dir)
    assert validation_of(project_dir) is first and first.ok
    flow = project_dir / "funnels" / "yoga.yml"
    flow.write_text(flow.read_text().replace("wait: 1d", "wait: 1 day", 1))
    edited = validation_of(project_dir)
    assert edited is not first and not edited.ok
    assert validation_of(project_dir) is edited
