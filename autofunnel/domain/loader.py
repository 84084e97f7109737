"""From a seller's YAML file to a typed `Funnel` or `Sequence`, with every mistake found.

The parser never stops at the first problem: each bad key, value or reference
is recorded with its line and parsing goes on, so one `validate` run lists all
that needs fixing. A file with any error yields no flow at all — a half-read
funnel is never run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import time, timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email

from autofunnel.domain.durations import DurationError, parse_duration
from autofunnel.domain.model import (
    WEEKDAYS,
    Action,
    AddTag,
    AllOf,
    AnyOf,
    Clicked,
    Condition,
    DeadlinePassed,
    DeadlineSpec,
    EventMatcher,
    Exit,
    FieldIs,
    Flow,
    FrequencyCap,
    Funnel,
    Goto,
    HasEvent,
    HasTag,
    Not,
    Notify,
    Offer,
    Opened,
    RemoveTag,
    Send,
    SendingRules,
    SendWindow,
    Sequence,
    SetFields,
    Stage,
    Step,
    Variant,
    Wait,
    WaitForEvent,
    WaitUntilDeadline,
    defined_deadlines,
    walk_condition,
)
from autofunnel.domain.problems import Problem, Problems, did_you_mean
from autofunnel.domain.yamlfile import LocatedDict, LocatedList, YamlSyntaxError, load_located

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
WINDOW = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
PERCENT = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")

FUNNEL_KEYS = (
    "funnel", "title", "from", "send_window", "quiet_days", "frequency_cap", "track_opens", "holdout",
    "double_opt_in", "form_thanks", "form_redirect", "consent_text", "offers", "stages",
)
SEQUENCE_KEYS = (
    "sequence", "title", "from", "send_window", "quiet_days", "frequency_cap", "track_opens", "offers",
    "start_on", "restart", "stop_on", "steps",
)
STAGE_KEYS = ("stage", "enter_on", "steps")
OFFER_KEYS = ("url", "expired_url", "deadline")
ACTIONS = ("send", "wait", "tag", "untag", "set", "notify", "goto", "exit")
STEP_MODIFIERS: dict[str, tuple[str, ...]] = {
    "send": ("id", "if", "deadline", "variants", "capped"),
    "wait": ("id",),
    "tag": ("id", "if"),
    "untag": ("id", "if"),
    "set": ("id", "if"),
    "notify": ("id", "if", "template"),
    "goto": ("id", "if"),
    "exit": ("id", "if"),
}
CONDITION_KEYS = ("deadline_passed", "has_tag", "field", "event", "opened", "clicked", "all", "any", "not")
FIELD_OPS = ("equals", "in", "exists")
CAP_KEYS = ("max", "per", "when_capped")
DEADLINE_KEYS = ("name", "in")


def load_flow_file(path: Path) -> tuple[Flow | None, list[Problem]]:
    """Read one `funnels/*.yml` file.

    The flow comes back even when problems were found (so its templates can still
    be checked); callers that run flows must refuse any file with an error.
    """
    problems = Problems(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.error(1, f"cannot read the file: {exc}")
        return None, problems.items
    flow = parse_flow(text, problems)
    return flow, problems.items


def parse_flow(text: str, problems: Problems) -> Flow | None:
    """Parse a flow from YAML text into `problems`' file; None if it is not a flow at all."""
    try:
        data = load_located(text)
    except YamlSyntaxError as exc:
        problems.error(exc.line, exc.message)
        return None
    if not isinstance(data, LocatedDict):
        problems.error(1, "a funnel file is a mapping that starts with `funnel: SLUG` or `sequence: SLUG`")
        return None
    parser = _FlowParser(problems)
    if "funnel" in data and "sequence" in data:
        problems.error(data.line_of("sequence"), "a file holds one funnel or one sequence, not both")
        return None
    if "funnel" in data:
        return parser.funnel(data)
    if "sequence" in data:
        return parser.sequence(data)
    problems.error(data.line, "a funnel file starts with `funnel: SLUG` or `sequence: SLUG`")
    return None


class _FlowParser:
    def __init__(self, problems: Problems) -> None:
        self.p = problems

    # helpers ---------------------------------------------------------------

    def keys(self, data: LocatedDict, allowed: Iterable[str], where: str) -> None:
        allowed = tuple(allowed)
        for key, line in data.duplicates:
            self.p.error(line, f"duplicate key {key!r}")
        for key in data:
            if key not in allowed:
                self.p.error(data.line_of(key), f"unknown key {key!r} in {where}{did_you_mean(str(key), allowed)}")

    def text(self, data: LocatedDict, key: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        value = data.get(key)
        line = data.line_of(key)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.p.error(line, f"{key}: expected text, got {_show(value)}")
            return None
        value = str(value)
        if pattern is not None and not pattern.match(value):
            self.p.error(line, f"{key}: {value!r} is not {what}")
            return None
        return value

    def duration(self, value: Any, line: int, key: str) -> timedelta | None:
        try:
            return parse_duration(value)
        except DurationError as exc:
            self.p.error(line, f"{key}: {exc}")
            return None

    def mapping(self, value: Any, line: int, what: str) -> LocatedDict | None:
        if isinstance(value, LocatedDict):
            return value
        self.p.error(line, f"{what}: expected a mapping, got {_show(value)}")
        return None

    def listing(self, value: Any, line: int, what: str) -> LocatedList | None:
        if isinstance(value, LocatedList):
            return value
        self.p.error(line, f"{what}: expected a list, got {_show(value)}")
        return None

    # flows -----------------------------------------------------------------

    def funnel(self, data: LocatedDict) -> Funnel | None:
        self.keys(data, FUNNEL_KEYS, "a funnel")
        slug = self.text(data, "funnel", SLUG, "a slug (lower-case letters, digits and dashes)")
        title = self.title(data, slug)
        rules = self.rules(data)
        holdout = self.holdout(data)
        double_opt_in = None
        if "double_opt_in" in data:
            double_opt_in = data["double_opt_in"]
            if not isinstance(double_opt_in, bool):
                self.p.error(data.line_of("double_opt_in"), f"double_opt_in: expected true or false, got {_show(double_opt_in)}")
                double_opt_in = None
        form_thanks = self.text(data, "form_thanks") if "form_thanks" in data else None
        consent_text = self.text(data, "consent_text") if "consent_text" in data else None
        form_redirect = None
        if "form_redirect" in data:
            form_redirect = self.text(data, "form_redirect")
            if form_redirect is not None and not re.match(r"^https?://[^\s/?#]+[^\s]*$", form_redirect):
                self.p.error(data.line_of("form_redirect"), f"form_redirect: expected an http:// or https:// URL, got {_show(form_redirect)}")
                form_redirect = None
        stages = self.stages(data)
        flow_steps = [(stage.name, stage.steps) for stage in stages]
        deadlines = defined_deadlines(flow_steps)
        offers = self.offers(data, deadlines)
        self.references(flow_steps, deadlines)
        if slug is None:
            return None
        return Funnel(
            slug=slug, title=title or slug, stages=tuple(stages), rules=rules, offers=offers,
            holdout=holdout, double_opt_in=double_opt_in, form_thanks=form_thanks or None, form_redirect=form_redirect,
            consent_text=consent_text or None, path=self.p.path, line=data.line_of("funnel"),
        )

    def sequence(self, data: LocatedDict) -> Sequence | None:
        self.keys(data, SEQUENCE_KEYS, "a sequence")
        slug = self.text(data, "sequence", SLUG, "a slug (lower-case letters, digits and dashes)")
        title = self.title(data, slug)
        rules = self.rules(data)
        start_on = None
        if "start_on" not in data:
            self.p.error(data.line, "a sequence needs `start_on: {event: TYPE}`")
        else:
            start_on = self.matcher(data["start_on"], data.line_of("start_on"), "start_on")
        stop_on: list[EventMatcher] = []
        if "stop_on" in data:
            raw = data["stop_on"]
            items = raw if isinstance(raw, LocatedList) else [raw]
            lines = raw.item_lines if isinstance(raw, LocatedList) else [data.line_of("stop_on")]
            for item, line in zip(items, lines, strict=True):
                matcher = self.matcher(item, line, "stop_on")
                if matcher is not None:
                    stop_on.append(matcher)
        restart = data.get("restart", False)
        if not isinstance(restart, bool):
            self.p.error(data.line_of("restart"), f"restart: expected true or false, got {_show(restart)}")
            restart = False
        steps: tuple[Step, ...] = ()
        if "steps" not in data:
            self.p.error(data.line, "a sequence needs `steps:`")
        else:
            raw_steps = self.listing(data["steps"], data.line_of("steps"), "steps")
            if raw_steps is not None:
                steps = self.steps(raw_steps, set())
        flow_steps = [("", steps)]
        deadlines = defined_deadlines(flow_steps)
        offers = self.offers(data, deadlines)
        self.references(flow_steps, deadlines)
        if slug is None or start_on is None:
            return None
        return Sequence(
            slug=slug, title=title or slug, start_on=start_on, steps=steps, stop_on=tuple(stop_on),
            restart=restart, rules=rules, offers=offers, path=self.p.path, line=data.line_of("sequence"),
        )

    def title(self, data: LocatedDict, slug: str | None) -> str | None:
        if "title" not in data:
            return slug
        return self.text(data, "title")

    def rules(self, data: LocatedDict) -> SendingRules:
        sender = None
        if "from" in data:
            sender = self.sender(data)
        window = None
        if "send_window" in data:
            window = self.window(data)
        quiet: frozenset[str] = frozenset()
        if "quiet_days" in data:
            quiet = self.quiet_days(data)
        cap = None
        if "frequency_cap" in data:
            cap = self.cap(data)
        track_opens = None
        if "track_opens" in data:
            track_opens = data["track_opens"]
            if not isinstance(track_opens, bool):
                self.p.error(data.line_of("track_opens"), f"track_opens: expected true or false, got {_show(track_opens)}")
                track_opens = None
        return SendingRules(sender=sender, send_window=window, quiet_days=quiet, frequency_cap=cap, track_opens=track_opens)

    def sender(self, data: LocatedDict) -> str | None:
        value = self.text(data, "from")
        if value is None:
            return None
        _, address = parseaddr(value)
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError as exc:
            self.p.error(data.line_of("from"), f"from: {value!r} is not a valid address: {exc}")
            return None
        return value

    def window(self, data: LocatedDict) -> SendWindow | None:
        value = data["send_window"]
        match = WINDOW.match(value) if isinstance(value, str) else None
        if match is None:
            self.p.error(data.line_of("send_window"), f"send_window: expected \"HH:MM-HH:MM\", got {_show(value)}")
            return None
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2 != 0):
            self.p.error(data.line_of("send_window"), f"send_window: {value!r} is not a time of day range")
            return None
        end = time(0, 0) if h2 == 24 else time(h2, m2)
        if (h1, m1) == (h2 % 24, m2):
            self.p.error(data.line_of("send_window"), f"send_window: {value!r} is empty")
            return None
        return SendWindow(time(h1, m1), end)

    def quiet_days(self, data: LocatedDict) -> frozenset[str]:
        raw = self.listing(data["quiet_days"], data.line_of("quiet_days"), "quiet_days")
        days: set[str] = set()
        for index, day in enumerate(raw or []):
            name = str(day).strip().lower()[:3] if isinstance(day, str) else None
            if name not in WEEKDAYS:
                self.p.error(raw.line_of(index), f"quiet_days: {_show(day)} is not a weekday{did_you_mean(str(day), WEEKDAYS)}; use mon, tue, wed, thu, fri, sat, sun")
            else:
                days.add(name)
        return frozenset(days)

    def cap(self, data: LocatedDict) -> FrequencyCap | None:
        raw = self.mapping(data["frequency_cap"], data.line_of("frequency_cap"), "frequency_cap")
        if raw is None:
            return None
        self.keys(raw, CAP_KEYS, "frequency_cap")
        maximum = raw.get("max")
        ok = True
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            self.p.error(raw.line_of("max"), f"frequency_cap.max: expected a whole number of at least 1, got {_show(maximum)}")
            ok = False
        per = self.duration(raw.get("per"), raw.line_of("per"), "frequency_cap.per")
        when = raw.get("when_capped", "defer")
        if when not in ("defer", "skip"):
            self.p.error(raw.line_of("when_capped"), f"frequency_cap.when_capped: expected defer or skip, got {_show(when)}")
            ok = False
        if not ok or per is None:
            return None
        return FrequencyCap(max=maximum, per=per, when_capped=when)

    def holdout(self, data: LocatedDict) -> float:
        if "holdout" not in data:
            return 0.0
        value = data["holdout"]
        fraction: float | None = None
        if isinstance(value, str) and (match := PERCENT.match(value.strip())):
            fraction = float(match.group(1)) / 100
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
            fraction = float(value)
        if fraction is None or not 0 <= fraction < 1:
            self.p.error(data.line_of("holdout"), f"holdout: expected a share like 10%, below 100%, got {_show(value)}")
            return 0.0
        return fraction

    def offers(self, data: LocatedDict, deadlines: Mapping[str, DeadlineSpec]) -> dict[str, Offer]:
        if "offers" not in data:
            return {}
        raw = self.mapping(data["offers"], data.line_of("offers"), "offers")
        found: dict[str, Offer] = {}
        for name in raw or {}:
            line = raw.line_of(name)
            if not isinstance(name, str) or not NAME.match(name):
                self.p.error(line, f"offers: {_show(name)} is not a name (letters, digits, dashes)")
                continue
            spec = self.mapping(raw[name], line, f"offer {name!r}")
            if spec is None:
                continue
            self.keys(spec, OFFER_KEYS, f"offer {name!r}")
            missing = [key for key in OFFER_KEYS if key not in spec]
            if missing:
                self.p.error(spec.line, f"offer {name!r} needs {', '.join(missing)}")
                continue
            urls = []
            for key in ("url", "expired_url"):
                url = spec[key]
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    self.p.error(spec.line_of(key), f"offer {name!r}: {key} must be an http:// or https:// URL, got {_show(url)}")
                urls.append(url)
            deadline = spec["deadline"]
            if deadline not in deadlines:
                self.p.error(spec.line_of("deadline"), f"offer {name!r}: undefined deadline {deadline!r}{_defined_hint(deadline, deadlines)}")
            found[name] = Offer(name, str(urls[0]), str(urls[1]), str(deadline), line)
        return found

    # stages and steps -----------------------------------------------------------

    def stages(self, data: LocatedDict) -> list[Stage]:
        if "stages" not in data:
            self.p.error(data.line, "a funnel needs `stages:`, a list with at least one stage")
            return []
        raw = self.listing(data["stages"], data.line_of("stages"), "stages")
        if raw is None:
            return []
        if not raw:
            self.p.error(raw.line, "stages: a funnel needs at least one stage")
        stages: list[Stage] = []
        seen: dict[str, int] = {}
        explicit_ids: set[str] = set()
        for index, item in enumerate(raw):
            spec = self.mapping(item, raw.line_of(index), "a stage")
            if spec is None:
                continue
            self.keys(spec, STAGE_KEYS, "a stage")
            if "stage" not in spec:
                self.p.error(spec.line, "a stage needs `stage: NAME`")
                continue
            name = self.text(spec, "stage", NAME, "a stage name (letters, digits, dashes)")
            if name is None:
                continue
            if name in seen:
                self.p.error(spec.line_of("stage"), f"duplicate stage {name!r} (first at line {seen[name]})")
                continue
            seen[name] = spec.line_of("stage")
            enter_on = None
            if "enter_on" in spec:
                enter_on = self.matcher(spec["enter_on"], spec.line_of("enter_on"), "enter_on")
                if index == 0:
                    self.p.error(spec.line_of("enter_on"), "the first stage is entered by subscribing to the funnel; it takes no enter_on")
            elif index > 0:
                self.p.error(spec.line_of("stage"), f"stage {name!r} needs `enter_on: {{event: …}}`: only the first stage is entered by subscribing")
            steps: tuple[Step, ...] = ()
            if "steps" in spec:
                raw_steps = self.listing(spec["steps"], spec.line_of("steps"), "steps")
                if raw_steps is not None:
                    steps = self.steps(raw_steps, explicit_ids)
            stages.append(Stage(name=name, steps=steps, enter_on=enter_on, line=spec.line_of("stage")))
        return stages

    def steps(self, raw: LocatedList, explicit_ids: set[str]) -> tuple[Step, ...]:
        """Parse steps and give each a stable id: explicit, else from what it does.

        A plain wait is named after the step it follows (`wait-after-welcome`), not
        its duration, so changing a duration keeps waiting leads where they are,
        and no other wait can inherit its id when an earlier one is edited.
        """
        parsed: list[tuple[Action, Condition | None, int, str | None, str]] = []
        for index, item in enumerate(raw):
            line = raw.line_of(index)
            step = self.step(item, line, explicit_ids)
            if step is not None:
                parsed.append(step)
        derived_counts: Counter[str] = Counter()
        steps: list[Step] = []
        taken = {explicit for _, _, _, explicit, _ in parsed if explicit}
        for action, condition, line, explicit, base in parsed:
            if explicit:
                steps.append(Step(explicit, action, condition, line, explicit_id=True))
                continue
            if isinstance(action, Wait):
                base = f"wait-after-{steps[-1].id}" if steps else "wait-first"
            derived_counts[base] += 1
            step_id = base if derived_counts[base] == 1 else f"{base}#{derived_counts[base]}"
            while step_id in taken:
                derived_counts[base] += 1
                step_id = f"{base}#{derived_counts[base]}"
            taken.add(step_id)
            steps.append(Step(step_id, action, condition, line))
        return tuple(steps)

    def step(
        self, item: Any, line: int, explicit_ids: set[str]
    ) -> tuple[Action, Condition | None, int, str | None, str] | None:
        if item == "exit":
            return Exit(), None, line, None, "exit"
        if not isinstance(item, LocatedDict):
            self.p.error(line, f"a step is a mapping like `send: NAME` or `wait: 1d`, got {_show(item)}")
            return None
        actions = [key for key in item if key in ACTIONS]
        if not actions:
            first = next(iter(item), "")
            self.p.error(item.line_of(first), f"unknown step {first!r}{did_you_mean(str(first), ACTIONS)}; a step is one of {', '.join(ACTIONS)}")
            return None
        if len(actions) > 1:
            self.p.error(item.line_of(actions[1]), f"a step does one thing; found {' and '.join(actions)}")
            return None
        kind = actions[0]
        self.keys(item, (kind, *STEP_MODIFIERS[kind]), f"a {kind} step")
        action_line = item.line_of(kind)
        explicit = None
        if "id" in item:
            explicit = self.text(item, "id", STEP_ID, "a step id (letters, digits, dashes, dots, colons)")
            if explicit is not None:
                if explicit in explicit_ids:
                    self.p.error(item.line_of("id"), f"duplicate step id {explicit!r}")
                explicit_ids.add(explicit)
        condition = None
        if "if" in item:
            condition = self.condition(item["if"], item.line_of("if"))
        built = getattr(self, f"_{kind}")(item, action_line)
        if built is None:
            return None
        action, base = built
        return action, condition, action_line, explicit, base

    def _send(self, item: LocatedDict, line: int) -> tuple[Action, str] | None:
        name = self.text(item, "send", NAME, "a template name (letters, digits, dashes)")
        variants: tuple[Variant, ...] = ()
        if "variants" in item:
            variants = self.variants(item["variants"], item.line_of("variants"))
        deadline = None
        if "deadline" in item:
            deadline = self.deadline_spec(item["deadline"], item.line_of("deadline"))
        capped = True
        if "capped" in item:
            if isinstance(item["capped"], bool):
                capped = item["capped"]
            else:
                self.p.error(item.line_of("capped"), f"capped: expected true or false, got {_show(item['capped'])}")
        if name is None:
            return None
        return Send(name=name, variants=variants, deadline=deadline, capped=capped), name

    def variants(self, raw: Any, line: int) -> tuple[Variant, ...]:
        pairs: list[tuple[Any, Any, int]] = []
        if isinstance(raw, LocatedList):
            pairs = [(name, 1, raw.line_of(i)) for i, name in enumerate(raw)]
        elif isinstance(raw, LocatedDict):
            pairs = [(name, raw[name], raw.line_of(name)) for name in raw]
        else:
            self.p.error(line, f"variants: expected a list of template names, or a mapping of name to weight, got {_show(raw)}")
            return ()
        if len(pairs) < 2:
            self.p.error(line, "variants: an A/B split needs at least two templates")
        found: list[Variant] = []
        for name, weight, at in pairs:
            if not isinstance(name, str) or not NAME.match(name):
                self.p.error(at, f"variants: {_show(name)} is not a template name")
                continue
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                self.p.error(at, f"variants: the weight of {name!r} must be a number above 0, got {_show(weight)}")
                continue
            found.append(Variant(name, float(weight)))
        return tuple(found)

    def deadline_spec(self, raw: Any, line: int) -> DeadlineSpec | None:
        spec = self.mapping(raw, line, "deadline")
        if spec is None:
            return None
        self.keys(spec, DEADLINE_KEYS, "deadline")
        if "name" not in spec or "in" not in spec:
            self.p.error(spec.line, "deadline needs `name` and `in`, e.g. {name: tripwire, in: 48h}")
            return None
        name = self.text(spec, "name", NAME, "a deadline name (letters, digits, dashes)")
        duration = self.duration(spec["in"], spec.line_of("in"), "deadline.in")
        if name is None or duration is None:
            return None
        return DeadlineSpec(name, duration, spec.line_of("name"))

    def _wait(self, item: LocatedDict, line: int) -> tuple[Action, str] | None:
        raw = item["wait"]
        if not isinstance(raw, LocatedDict):
            duration = self.duration(raw, line, "wait")
            return (Wait(duration), "wait") if duration is not None else None
        if "until_deadline" in raw:
            self.keys(raw, ("until_deadline",), "wait")
            name = self.text(raw, "until_deadline", NAME, "a deadline name")
            return (WaitUntilDeadline(name), f"wait-until-{name}") if name is not None else None
        if "event" in raw:
            matcher = self.matcher(raw, raw.line, "wait", reserved=("timeout",))
            timeout = None
            if "timeout" not in raw:
                self.p.error(raw.line, "wait for an event needs a `timeout`, e.g. {event: purchase, timeout: 3d}")
            else:
                timeout = self.duration(raw["timeout"], raw.line_of("timeout"), "timeout")
            if matcher is None or timeout is None:
                return None
            return WaitForEvent(matcher, timeout), f"wait-event-{matcher.event}"
        first = next(iter(raw), "")
        self.p.error(raw.line_of(first), f"unknown key {first!r} in wait{did_you_mean(str(first), ('until_deadline', 'event', 'timeout'))}; write a duration, {{until_deadline: NAME}} or {{event: TYPE, timeout: DURATION}}")
        return None

    def _tag(self, item: LocatedDict, line: int) -> tuple[Action, str] | None:
        tag = self.text(item, "tag")
        return (AddTag(tag), f"tag-{tag}") if tag else None

    def _untag(self, item: LocatedDict, line: int) -> tuple[Action, str] | None:
        tag = self.text(item, "untag")
        return (RemoveTag(tag), f"untag-{tag}") if tag else None

    def _set(self, item: LocatedDict, line: int) -> tuple[Action, str] | None:
        raw = self.mapping(item["set"], line, "set")
        if raw is None:
            return None
        if not raw:
            self.p.error(line, "set: name at least one field, e.g. {set: {level: beginner}}")
            return None
        for key in raw:
            if not isinstance(key, str) or not NAME.match(key):
                self.p.error(raw.line_of(key), f"set: {_show(key)} is not a field name")
                return None
        values = {key: _plain(value) for key, value in raw.items()}
        return SetFields(values), "set-" + "-".join(sorted(values))

    def _notify(self, item: LocatedDict, line: int) -> tuple[Action, str] | None:
        target = self.text(item, "notify")
        if target is None:
            return None
        if target != "owner":
            try:
                validate_email(target, check_deliverability=False)
            except EmailNotValidError:
                self.p.error(line, f"notify: expected `owner` or an email address, got {target!r}")
                return None
        if "template" not in item:
            self.p.error(line, "notify needs a `template:` naming the email to send")
            return None
        template = self.text(item, "template", NAME, "a template name")
        if template is None:
            return None
        return Notify(target, template), f"notify-{template}"

    def _goto(self, item: LocatedDict, line: int) -> tuple[Action, str] | None:
        target = self.text(item, "goto")
        return (Goto(target), f"goto-{target}") if target else None

    def _exit(self, item: LocatedDict, line: int) -> tuple[Action, str] | None:
        if item["exit"] not in (None, True):
            self.p.error(line, f"exit takes no value, got {_show(item['exit'])}")
            return None
        return Exit(), "exit"

    # conditions and matchers --------------------------------------------------

    def matcher(self, raw: Any, line: int, what: str, reserved: tuple[str, ...] = ()) -> EventMatcher | None:
        spec = self.mapping(raw, line, what)
        if spec is None:
            return None
        for key, at in spec.duplicates:
            self.p.error(at, f"duplicate key {key!r}")
        event = spec.get("event")
        if not isinstance(event, str) or not event.strip():
            self.p.error(spec.line, f"{what}: needs `event: TYPE`, e.g. {{event: purchase}}")
            return None
        props: dict[str, Any] = {}
        for key, value in spec.items():
            if key == "event" or key in reserved:
                continue
            if isinstance(value, (LocatedDict, LocatedList)):
                self.p.error(spec.line_of(key), f"{what}: property {key!r} must be a plain value to compare")
                return None
            props[str(key)] = value
        return EventMatcher(event.strip(), props)

    def condition(self, raw: Any, line: int) -> Condition | None:
        spec = self.mapping(raw, line, "if")
        if spec is None:
            return None
        kinds = [key for key in spec if key in CONDITION_KEYS]
        if not kinds:
            first = next(iter(spec), "")
            self.p.error(spec.line_of(first), f"unknown condition {first!r}{did_you_mean(str(first), CONDITION_KEYS)}")
            return None
        kind = kinds[0]
        at = spec.line_of(kind)
        if kind == "field":
            self.keys(spec, ("field", *FIELD_OPS), "a field condition")
            ops = [op for op in FIELD_OPS if op in spec]
            if len(ops) != 1:
                self.p.error(at, "a field condition needs exactly one of equals, in, exists")
                return None
            value = spec[ops[0]]
            if ops[0] == "in" and not isinstance(value, list):
                self.p.error(spec.line_of("in"), f"in: expected a list, got {_show(value)}")
                return None
            if ops[0] == "exists" and not isinstance(value, bool):
                self.p.error(spec.line_of("exists"), f"exists: expected true or false, got {_show(value)}")
                return None
            return FieldIs(str(spec["field"]), ops[0], _plain(value), at)
        if kind == "event":
            matcher = self.matcher(spec, at, "if")
            return HasEvent(matcher, at) if matcher else None
        self.keys(spec, (kind,), "a condition")
        value = spec[kind]
        if kind in ("all", "any"):
            items = self.listing(value, at, kind)
            if items is None:
                return None
            children = [self.condition(child, items.line_of(i)) for i, child in enumerate(items)]
            if any(child is None for child in children):
                return None
            return (AllOf if kind == "all" else AnyOf)(tuple(children), at)  # type: ignore[arg-type]
        if kind == "not":
            child = self.condition(value, at)
            return Not(child, at) if child else None
        name = self.text(spec, kind)
        if name is None:
            return None
        builders: dict[str, Callable[[str, int], Condition]] = {
            "deadline_passed": DeadlinePassed, "has_tag": HasTag, "opened": Opened, "clicked": Clicked,
        }
        return builders[kind](name, at)

    # references within the flow -------------------------------------------------

    def references(self, flow_steps: list[tuple[str, tuple[Step, ...]]], deadlines: Mapping[str, DeadlineSpec]) -> None:
        send_ids = {step.id for _, steps in flow_steps for step in steps if isinstance(step.action, Send)}
        for _, steps in flow_steps:
            ids = [step.id for step in steps]
            for step in steps:
                action = step.action
                if isinstance(action, Goto) and action.target not in ids:
                    self.p.error(step.line, f"goto: no step with id {action.target!r} in this stage{did_you_mean(action.target, ids)}")
                if isinstance(action, WaitUntilDeadline) and action.deadline not in deadlines:
                    self.p.error(step.line, f"wait: undefined deadline {action.deadline!r}{_defined_hint(action.deadline, deadlines)}")
                for node in walk_condition(step.condition):
                    if isinstance(node, DeadlinePassed) and node.name not in deadlines:
                        self.p.error(node.line, f"deadline_passed: undefined deadline {node.name!r}{_defined_hint(node.name, deadlines)}")
                    if isinstance(node, (Opened, Clicked)) and node.step_id not in send_ids:
                        kind = "opened" if isinstance(node, Opened) else "clicked"
                        self.p.error(node.line, f"{kind}: no send step with id {node.step_id!r}{did_you_mean(node.step_id, send_ids)}")


def _defined_hint(name: str, deadlines: Mapping[str, Any]) -> str:
    hint = did_you_mean(name, deadlines)
    if hint:
        return hint
    if not deadlines:
        return "; start one with `deadline: {name: …, in: 48h}` on a send step"
    return f"; defined here: {', '.join(sorted(deadlines))}"


def _plain(value: Any) -> Any:
    """Strip the line-keeping subclasses so model values are ordinary data."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
