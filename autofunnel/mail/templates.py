"""Email templates: front matter, the Jinja2 sandbox they render in, and the
static inspection `validate` runs on them.

One environment serves both rendering and validation, so a template that
validates is compiled exactly as it will be sent. The loader blanks the front
matter rather than cutting it, so Jinja's line numbers are the file's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import FileSystemLoader, StrictUndefined, TemplateSyntaxError, meta, nodes, pass_context
from jinja2.environment import Environment
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from autofunnel.domain.problems import Problem, did_you_mean
from autofunnel.domain.yamlfile import LocatedDict, YamlSyntaxError, load_located
from autofunnel.errors import FrontMatterError

FRONT_MATTER_KEYS = ("subject", "preheader")

CONTEXT_NAMES = frozenset({
    "lead", "funnel", "event", "deadline", "offer_url", "countdown_url", "unsubscribe_url",
    "postal_address", "subject", "preheader",
})
"""What every email may use (SPEC.md, "Email templates"); anything else is an undefined variable."""

LEAD_ATTRIBUTES = ("email", "first_name", "fields", "tags", "timezone")
"""What `lead` holds in a template; `lead_context` builds it, `validate` checks against it."""

FUNNEL_ATTRIBUTES = ("slug", "title", "stage")
"""What `funnel` holds in a template; `funnel_context` builds it, `validate` checks against it."""

EVENT_PROPERTIES: dict[str, frozenset[str]] = {
    "subscribed": frozenset({"funnel", "source"}),
    "purchase": frozenset({"product", "amount", "currency", "order_id"}),
    "refund": frozenset({"product", "amount", "currency", "order_id"}),
    "cart_updated": frozenset({"cart_id", "items", "value", "checkout_url", "currency"}),
    "checkout_started": frozenset({"cart_id", "items", "value", "checkout_url", "currency"}),
    "cart_emptied": frozenset({"cart_id"}),
}
"""The properties the known event types carry (SPEC.md "Event types"); a custom type's are unknown."""

DEADLINE_FUNCTIONS = ("deadline", "countdown_url")
OFFER_FUNCTIONS = ("offer_url",)

_FENCE = re.compile(r"^---\s*$")


def lead_context(*, email: str, first_name: str | None, fields: dict[str, Any], tags: list[str], timezone: str | None) -> dict[str, Any]:
    """The `lead` an email sees; keyword-only so it cannot drift from LEAD_ATTRIBUTES unnoticed."""
    return {"email": email, "first_name": first_name, "fields": fields, "tags": tags, "timezone": timezone}


def funnel_context(*, slug: str, title: str, stage: str | None) -> dict[str, Any]:
    """The `funnel` an email sees (`stage` is None in a sequence)."""
    return {"slug": slug, "title": title, "stage": stage}


@dataclass(frozen=True)
class FrontMatter:
    values: dict[str, str]
    lines: dict[str, int]
    body_start: int


def split_front_matter(source: str) -> tuple[FrontMatter | None, str]:
    """Separate `---` front matter from the body, keeping the body's line numbers.

    The body comes back with the front matter's lines left blank, so an error at
    line 9 of the body is reported as line 9 of the file.
    """
    lines = source.splitlines(keepends=True)
    if not lines or not _FENCE.match(lines[0]):
        return None, source
    for index in range(1, len(lines)):
        if _FENCE.match(lines[index]):
            break
    else:
        raise FrontMatterError(1, "front matter opened with --- is never closed")
    header = "".join(lines[1:index])
    try:
        data = load_located(header) if header.strip() else LocatedDict()
    except YamlSyntaxError as exc:
        raise FrontMatterError(exc.line + 1, exc.message) from None
    if not isinstance(data, LocatedDict):
        raise FrontMatterError(2, "front matter must be `key: value` lines (subject, preheader)")
    if not hasattr(data, "line"):
        data.line, data.key_lines, data.duplicates = 1, {}, []
    values: dict[str, str] = {}
    key_lines: dict[str, int] = {}
    for key, value in data.items():
        at = data.line_of(key) + 1
        if key not in FRONT_MATTER_KEYS:
            raise FrontMatterError(at, f"unknown front matter key {key!r}{did_you_mean(str(key), FRONT_MATTER_KEYS)}; allowed: subject, preheader")
        if value is None or isinstance(value, (dict, list, bool)):
            raise FrontMatterError(at, f"{key}: expected text")
        values[key] = str(value)
        key_lines[key] = at
    body = "\n" * (index + 1) + "".join(lines[index + 1 :])
    return FrontMatter(values, key_lines, index + 2), body


class ProjectLoader(FileSystemLoader):
    """Loads `templates/…` with front matter blanked, so `{% extends %}` works on emails too."""

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = super().get_source(environment, template)
        try:
            _, body = split_front_matter(source)
        except FrontMatterError:
            body = source
        return body, filename, uptodate


@pass_context
def format_datetime(context: Context, value: datetime, fmt: str = "%a %d %b %Y, %H:%M %Z") -> str:
    """A moment as the lead reads it: in the lead's zone when known, else UTC."""
    return _in_zone(value, _lead_timezone(context)).strftime(fmt)


@pass_context
def format_date(context: Context, value: datetime, fmt: str = "%d %b %Y") -> str:
    return _in_zone(value, _lead_timezone(context)).strftime(fmt)


def _lead_timezone(context: Context) -> str | None:
    lead = context.get("lead")
    timezone = lead.get("timezone") if isinstance(lead, dict) else getattr(lead, "timezone", None)
    return timezone if isinstance(timezone, str) else None


def _in_zone(value: datetime, timezone: str | None) -> datetime:
    if timezone:
        try:
            return value.astimezone(ZoneInfo(timezone))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return value


PAGE_NAMES: dict[str, frozenset[str]] = {
    "confirm.html": frozenset({"confirm_url", "consent_text", "reminder", "erase_days"}),
    "form.html": frozenset({"action", "consent_text", "error", "values", "hidden_fields"}),
}
"""What the double opt-in email (`confirm.html`) and the subscribe form page (`form.html`,
not an email: no front matter) of a funnel can use beside the usual names."""


def make_environment(templates_dir: Path) -> SandboxedEnvironment:
    """The sandbox every email renders in: StrictUndefined, HTML autoescaped, our filters."""
    env = SandboxedEnvironment(
        loader=ProjectLoader(str(templates_dir)),
        undefined=StrictUndefined,
        autoescape=lambda name: name is None or not name.endswith(".txt"),
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.filters["datetime"] = format_datetime
    env.filters["date"] = format_date
    return env


# Inspection ---------------------------------------------------------------------


@dataclass
class TemplateReport:
    """What one template file says and uses, for cross-checks against its flow."""

    path: Path
    problems: list[Problem] = field(default_factory=list)
    deadlines: list[tuple[str, int]] = field(default_factory=list)
    offers: list[tuple[str, int]] = field(default_factory=list)
    event_properties: list[tuple[str, int]] = field(default_factory=list)
    """`event.NAME` / `event['NAME']` uses: checked against the flow's triggers, which only the flow knows."""
    subject: str | None = None


def inspect_template(env: SandboxedEnvironment, templates_dir: Path, path: Path) -> TemplateReport:
    """Compile a template and list its mistakes and the deadlines and offers it names."""
    report = TemplateReport(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report.problems.append(Problem(path, 1, f"cannot read the template: {exc}"))
        return report
    is_email = path.suffix == ".html" and path.parent.name != "layouts" and path.name != "form.html"
    try:
        front, body = split_front_matter(source)
    except FrontMatterError as exc:
        report.problems.append(Problem(path, exc.line, exc.message))
        return report
    if is_email:
        if front is None or "subject" not in front.values:
            report.problems.append(Problem(path, 1, "an email needs front matter with a subject: ---, subject: \"…\", ---"))
        else:
            report.subject = front.values["subject"]
            for key, text in front.values.items():
                _check_source(env, text, path, front.lines[key], None, report)
    name = path.relative_to(templates_dir).as_posix()
    _check_source(env, body, path, 0, name, report)
    return report


def _check_source(
    env: SandboxedEnvironment, source: str, path: Path, line_offset: int, name: str | None, report: TemplateReport
) -> None:
    try:
        tree = env.parse(source, name=name, filename=str(path))
        env.compile(tree, name=name, filename=str(path))
    except TemplateSyntaxError as exc:
        line = (exc.lineno or 1) + max(line_offset - 1, 0)
        report.problems.append(Problem(path, line, f"template error: {exc.message}"))
        return
    known = CONTEXT_NAMES | set(env.globals) | (PAGE_NAMES.get(path.name, frozenset()) if path.parent.name != "layouts" else frozenset())
    for variable in sorted(meta.find_undeclared_variables(tree) - known):
        line = _first_use(tree, variable) + max(line_offset - 1, 0)
        report.problems.append(Problem(path, line, f"undefined variable {variable!r}; templates can use {', '.join(sorted(CONTEXT_NAMES))}"))
    offset = max(line_offset - 1, 0)
    for name, attribute, line in _attribute_uses(tree):
        known = _KNOWN_ATTRIBUTES.get(name)
        if known is not None and attribute not in known:
            report.problems.append(Problem(
                path, line + offset,
                f"{name}.{attribute}: {name} has no {attribute!r}{did_you_mean(attribute, known)}; it has {', '.join(known)}",
            ))
        elif name == "event" and attribute != "get":  # event.get('x', default) is how to read an optional one
            report.event_properties.append((attribute, line + offset))
    for call in tree.find_all(nodes.Call):
        if not isinstance(call.node, nodes.Name) or not call.args:
            continue
        argument = call.args[0]
        if not isinstance(argument, nodes.Const) or not isinstance(argument.value, str):
            continue
        at = call.lineno + max(line_offset - 1, 0)
        if call.node.name in DEADLINE_FUNCTIONS:
            report.deadlines.append((argument.value, at))
        elif call.node.name in OFFER_FUNCTIONS:
            report.offers.append((argument.value, at))


_KNOWN_ATTRIBUTES: dict[str, tuple[str, ...]] = {"lead": LEAD_ATTRIBUTES, "funnel": FUNNEL_ATTRIBUTES}


def _attribute_uses(tree: nodes.Template) -> Iterator[tuple[str, str, int]]:
    """(lead|funnel|event, attribute, line) for every `x.attr` and `x['attr']` on those context names.

    A name the template assigns itself (`{% set lead = … %}`, a loop variable) is its own,
    not the context's, and is left alone.
    """
    assigned = {node.name for node in tree.find_all(nodes.Name) if node.ctx in ("store", "param")}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not isinstance(target, nodes.Name) or target.ctx != "load" or target.name in assigned:
            continue
        if target.name not in ("lead", "funnel", "event"):
            continue
        if isinstance(node, nodes.Getattr):
            yield target.name, node.attr, node.lineno
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield target.name, node.arg.value, node.lineno


def _first_use(tree: nodes.Template, variable: str) -> int:
    lines = [node.lineno for node in tree.find_all(nodes.Name) if node.name == variable and node.ctx == "load"]
    return min(lines) if lines else 1


def template_files(templates_dir: Path, folder: str) -> Iterator[Path]:
    """The `.html` emails and `.txt` twins of one flow (or of `layouts`), sorted."""
    directory = templates_dir / folder
    if not directory.is_dir():
        return iter(())
    return iter(sorted(p for p in directory.iterdir() if p.suffix in (".html", ".txt") and p.is_file()))

