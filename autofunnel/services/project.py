"""Reading a project folder: every funnel and sequence file, every template, checked together.

`validate_project` is what `autofunnel validate` prints; `load_project` is what
the running system uses, and it refuses a project with any error, so a broken
file can never half-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autofunnel.domain.checks import flow_warnings
from autofunnel.domain.loader import load_flow_file
from autofunnel.domain.durations import format_duration
from autofunnel.domain.model import EventMatcher, Flow, Funnel, Notify, Project, Send
from autofunnel.domain.problems import Problem, did_you_mean
from autofunnel.domain.words import matcher_text
from autofunnel.errors import ProjectError
from autofunnel.mail.templates import EVENT_PROPERTIES, TemplateReport, inspect_template, make_environment, template_files

FUNNELS_DIR = "funnels"
TEMPLATES_DIR = "templates"
LAYOUTS = "layouts"


@dataclass
class ValidationResult:
    root: Path
    flows: dict[str, Flow] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_project(root: Path) -> ValidationResult:
    """Check every file of a project and return all problems, errors and warnings, in file order."""
    result = ValidationResult(root)
    funnels_dir = root / FUNNELS_DIR
    if not funnels_dir.is_dir():
        result.problems.append(Problem(funnels_dir, 1, "no funnels/ folder here; run `autofunnel init` to start a project"))
        return result
    files = sorted(p for p in funnels_dir.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())
    if not files:
        result.problems.append(Problem(funnels_dir, 1, "no funnel files (funnels/*.yml)"))
    owners: dict[str, Path] = {}
    for path in files:
        flow, problems = load_flow_file(path)
        result.problems.extend(problems)
        if flow is None:
            continue
        if flow.slug in owners:
            result.problems.append(Problem(path, flow.line, f"duplicate slug {flow.slug!r}: also used by {owners[flow.slug]}"))
            continue
        owners[flow.slug] = path
        result.flows[flow.slug] = flow
        result.problems.extend(flow_warnings(flow))

    templates_dir = root / TEMPLATES_DIR
    env = make_environment(templates_dir)
    for layout in template_files(templates_dir, LAYOUTS):
        result.problems.extend(inspect_template(env, templates_dir, layout).problems)
    for flow in result.flows.values():
        reports = [inspect_template(env, templates_dir, path) for path in template_files(templates_dir, flow.slug)]
        result.problems.extend(_check_flow_templates(flow, templates_dir, reports))
    result.problems.sort(key=lambda p: (str(p.path), p.line, p.severity, p.message))
    return result


def _check_flow_templates(flow: Flow, templates_dir: Path, reports: list[TemplateReport]) -> list[Problem]:
    problems: list[Problem] = []
    emails = {report.path.stem for report in reports if report.path.suffix == ".html"}
    for _, steps in flow.step_lists:
        for step in steps:
            names: tuple[str, ...] = ()
            if isinstance(step.action, Send):
                names = step.action.templates
            elif isinstance(step.action, Notify):
                names = (step.action.template,)
            for name in names:
                if name not in emails:
                    expected = templates_dir / flow.slug / f"{name}.html"
                    problems.append(Problem(flow.path, step.line, f"unknown template {name!r}: {expected} does not exist{did_you_mean(name, emails)}"))
    deadlines = flow.deadlines
    mentioned: set[str] = set()
    for report in reports:
        problems.extend(report.problems)
        for name, line in report.deadlines:
            mentioned.add(name)
            if name not in deadlines:
                problems.append(Problem(report.path, line, f"undefined deadline {name!r} in {flow.slug}{did_you_mean(name, deadlines)}"))
        for name, line in report.offers:
            offer = flow.offers.get(name)
            if offer is None:
                problems.append(Problem(report.path, line, f"undefined offer {name!r} in {flow.slug}{did_you_mean(name, flow.offers)}"))
            else:
                mentioned.add(offer.deadline)
    properties = trigger_properties(flow)
    if properties is not None:
        for report in reports:
            for name, line in report.event_properties:
                if name not in properties:
                    triggers = ", ".join(sorted({m.event for m in _triggers(flow)}))
                    problems.append(Problem(
                        report.path, line,
                        f"event.{name}: the events that start {flow.slug} ({triggers}) are not known to carry {name!r}"
                        f"{did_you_mean(name, properties)}; an email whose event lacks it fails to render "
                        f"(known: {', '.join(sorted(properties))}; `event.get('{name}')` reads an optional one)",
                        "warning",
                    ))
    for name, spec in deadlines.items():
        if name not in mentioned:
            problems.append(
                Problem(flow.path, spec.line, f"deadline {name!r} is never shown: no email of {flow.slug} uses deadline('{name}'), countdown_url('{name}') or an offer bound to it", "warning")
            )
    return problems


def _triggers(flow: Flow) -> list[EventMatcher]:
    """The matchers of the events whose properties a flow's emails see as `event`."""
    if isinstance(flow, Funnel):
        return [EventMatcher("subscribed")] + [stage.enter_on for stage in flow.stages[1:] if stage.enter_on is not None]
    return [flow.start_on]


def trigger_properties(flow: Flow) -> frozenset[str] | None:
    """The properties every trigger of `flow` may carry; None when one is a custom event (unknowable)."""
    known: set[str] = set()
    for matcher in _triggers(flow):
        if matcher.event not in EVENT_PROPERTIES:
            return None
        known |= EVENT_PROPERTIES[matcher.event] | set(matcher.properties)
    return frozenset(known)


def load_project(root: Path) -> Project:
    """The project the system runs; any error refuses the whole project."""
    if not (root / FUNNELS_DIR).is_dir():
        raise ProjectError(
            f"{root.resolve()} is not an autofunnel project: it has no {FUNNELS_DIR}/ folder. Point AUTOFUNNEL_PROJECT_DIR "
            "(or --project-dir; AUTOFUNNEL_PROJECT in docker compose) at your project folder, or run `autofunnel init` there"
        )
    result = validate_project(root)
    if not result.ok:
        shown = "\n".join(str(p) for p in result.errors[:10])
        more = f"\n… and {len(result.errors) - 10} more" if len(result.errors) > 10 else ""
        raise ProjectError(f"the project at {root} has errors; run `autofunnel validate`:\n{shown}{more}")
    return Project(root=root, flows=dict(result.flows))


def summarize(flow: Flow) -> list[str]:
    """A few lines a seller can check at a glance against what they meant to write."""
    lines: list[str] = []
    deadlines = ", ".join(f"{name} ({format_duration(spec.duration)})" for name, spec in flow.deadlines.items()) or "none"
    if isinstance(flow, Funnel):
        steps = sum(len(stage.steps) for stage in flow.stages)
        emails = sum(1 for stage in flow.stages for step in stage.steps if isinstance(step.action, Send))
        lines.append(f"{flow.slug} — funnel \"{flow.title}\": {len(flow.stages)} stages, {steps} steps, {emails} emails; deadlines: {deadlines}")
        for index, stage in enumerate(flow.stages):
            entry = "on subscribe" if index == 0 or stage.enter_on is None else f"on {matcher_text(stage.enter_on)}"
            sends = [step.id for step in stage.steps if isinstance(step.action, Send)]
            lines.append(f"  {index + 1}. {stage.name:<12} enters {entry}; {len(stage.steps)} steps; emails: {', '.join(sends) or '—'}")
    else:
        emails = sum(1 for step in flow.steps if isinstance(step.action, Send))
        stops = ", ".join(f"on {matcher_text(m)}" for m in flow.stop_on) or "nothing"
        lines.append(f"{flow.slug} — sequence \"{flow.title}\": starts on {matcher_text(flow.start_on)}, stops {stops}; {len(flow.steps)} steps, {emails} emails; deadlines: {deadlines}")
    return lines


@dataclass(frozen=True)
class FileProblem:
    """One problem `autofunnel validate` reports, as a page lists it."""

    file: str
    """The file's path relative to the project folder (absolute when it lies outside)."""
    line: int
    message: str
    severity: str
    """`error` or `warning`."""


def project_problems(result: ValidationResult) -> tuple[FileProblem, ...]:
    """A validation's errors and warnings in file order, each file named from the project folder."""
    root = result.root
    found = []
    for problem in result.problems:
        path = Path(problem.path)
        try:
            shown = path.relative_to(root).as_posix()
        except ValueError:
            shown = str(path)
        found.append(FileProblem(shown, problem.line, problem.message, problem.severity))
    return tuple(found)
