"""Settings that send mail badly: the warnings `validate` prints, and `run`, `web` and
`worker` log once at start (`announce_setup_warnings`), from one function.

Each is legal and the system runs, but the mail will not be delivered well: a
From address at `localhost.localdomain`, links and the one-click unsubscribe
pointing at localhost, a DKIM signature whose domain does not align with the From
(DMARC fails) or no signature at all because one of its three settings is missing,
a marketing email without a visible unsubscribe link (Gmail and Yahoo require one),
a layout that shows a postal address nobody set, an `opened:` condition in a flow
that does not track opens (never true).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import TemplateError, nodes
from jinja2.sandbox import SandboxedEnvironment

from autofunnel.config import CONFIG_FILE, Settings
from autofunnel.domain.model import Flow, Opened, Send, walk_condition
from autofunnel.domain.problems import Problem
from autofunnel.mail.templates import make_environment
from autofunnel.services.senders import dkim_ready, sender_of, tracks_opens

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})


def _aligned(from_domain: str, dkim_domain: str) -> bool:
    """DMARC's relaxed alignment, approximated: one domain is the other or a subdomain of it
    (no public-suffix list; `a.example` and `b.example` count as not aligned)."""
    a, b = from_domain.lower().rstrip("."), dkim_domain.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def setup_warnings(settings: Settings, flows: Mapping[str, Flow]) -> list[Problem]:
    """What in these settings and flows will make mail go out badly; warnings, never errors."""
    config = Path(settings.project_dir) / CONFIG_FILE
    problems: list[Problem] = []
    host = urlsplit(settings.base_url).hostname or ""
    if host in LOCAL_HOSTS or host.endswith(".localhost"):
        problems.append(Problem(config, 1, f"base_url is {settings.base_url}: every link in emails, and the one-click unsubscribe, points at this machine; set AUTOFUNNEL_BASE_URL to your public https:// address", "warning"))
    elif not settings.base_url.startswith("https://"):
        problems.append(Problem(config, 1, f"base_url {settings.base_url} is not https: mail clients flag plain-http links, and tokens travel in clear; set AUTOFUNNEL_BASE_URL to an https:// address", "warning"))
    dkim = {"AUTOFUNNEL_DKIM_DOMAIN": settings.dkim_domain, "AUTOFUNNEL_DKIM_SELECTOR": settings.dkim_selector, "AUTOFUNNEL_DKIM_KEY_FILE": settings.dkim_key_file}
    given = [name for name, value in dkim.items() if value]
    if given and len(given) < len(dkim):
        missing = ", ".join(name for name in dkim if name not in given)
        problems.append(Problem(config, 1, f"DKIM is half configured ({', '.join(given)} set, {missing} missing): no email is signed", "warning"))
    env: SandboxedEnvironment | None = None
    postal_shown: set[str] = set()
    templates = Path(settings.project_dir) / "templates"
    for flow in flows.values():
        sender = sender_of(settings, flow)
        domain = parseaddr(sender)[1].rpartition("@")[2]
        if not flow.rules.sender and not settings.mail_from:
            problems.append(Problem(flow.path, flow.line, f"{flow.slug} has no from: and AUTOFUNNEL_MAIL_FROM is not set: its emails go out as {parseaddr(sender)[1]}", "warning"))
        if dkim_ready(settings) and settings.dkim_domain and not _aligned(domain, settings.dkim_domain):
            problems.append(Problem(flow.path, flow.line, f"{flow.slug} sends from {domain} but DKIM signs for {settings.dkim_domain}: DMARC alignment fails; sign for the From domain or send from it", "warning"))
        if not tracks_opens(settings, flow):
            for step in (step for _, steps in flow.step_lists for step in steps):
                for node in walk_condition(step.condition):
                    if isinstance(node, Opened):
                        problems.append(Problem(flow.path, node.line or step.line, f"opened: {node.step_id} is never true: {flow.slug} does not track opens (set track_opens: true in it, or AUTOFUNNEL_TRACK_OPENS=true)", "warning"))
        if env is None:
            env = make_environment(templates)
        names = sorted({name for _, steps in flow.step_lists for step in steps if isinstance(step.action, Send) for name in step.action.templates})
        for name in names:
            reads = template_names(env, f"{flow.slug}/{name}.html")
            if reads is None:
                continue  # unknown or broken: validate reports it as an error
            if not any("unsubscribe_url" in used for used in reads.values()):
                problems.append(Problem(templates / flow.slug / f"{name}.html", 1, "a marketing email without a visible unsubscribe link: use {{ unsubscribe_url }} in a link (the example layout has one); Gmail and Yahoo require it", "warning"))
            if not settings.postal_address:
                postal_shown |= {template for template, used in reads.items() if "postal_address" in used}
    for template in sorted(postal_shown):
        problems.append(Problem(templates / template, 1, "shows postal_address but AUTOFUNNEL_POSTAL_ADDRESS is not set: anti-spam law (CAN-SPAM, the EU) asks for your postal address in marketing email", "warning"))
    return problems


def template_names(env: SandboxedEnvironment, name: str) -> dict[str, set[str]] | None:
    """Per template — this one and those it extends or includes — the context names it reads; None when it cannot be parsed."""
    names: dict[str, set[str]] = {}
    pending, done = [name], set()
    while pending:
        current = pending.pop()
        if current in done:
            continue
        done.add(current)
        try:
            source = env.loader.get_source(env, current)[0] if env.loader else ""
            tree = env.parse(source)
        except TemplateError:
            if current == name:
                return None
            continue
        names[current] = {node.name for node in tree.find_all(nodes.Name) if node.ctx == "load"}
        for node in tree.find_all((nodes.Extends, nodes.Include)):
            if isinstance(node.template, nodes.Const) and isinstance(node.template.value, str):
                pending.append(node.template.value)
    return names


def announce_setup_warnings(settings: Settings, flows: Mapping[str, Flow]) -> None:
    """Log the setup warnings once, at a process's start (`run` does it for its children)."""
    for problem in setup_warnings(settings, flows):
        log.warning("%s", problem)
