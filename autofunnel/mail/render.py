"""Render one email: a template and a context in, subject, preheader, HTML and text out.

    renderer = Renderer(project_dir / "templates")          # one per process; it caches
    email = renderer.render("yoga", "tripwire-offer", context)

Steps, for `templates/<folder>/<name>.html`:

1. The front matter's `subject` and `preheader` render as Jinja text (no HTML
   escaping: they are plain text; the layout escapes them where it shows them)
   with the same context. Line breaks in the subject become spaces.
2. The body renders with `subject` and `preheader` added to the context, so a
   layout can put them in `<title>` and the hidden preheader span.
3. CSS from `<style>` blocks is inlined into `style=` attributes (css-inline, a
   Rust library; its inliner object is made once). At-rules such as `@media`
   are kept in a `<style>` block, where clients that understand them read them.
   Remote stylesheets are never fetched: a template must not make the worker
   open URLs.
4. The text part is the `<name>.txt` twin when there is one (rendered without
   autoescape), else made from the HTML by `html_to_text`.

Links are NOT rewritten and no open pixel is added here: their tokens depend on
the delivery id, so the caller composes `render` → `links.rewrite_links` →
`links.add_open_pixel`.

Any failure inside a template — an undefined variable (StrictUndefined), an
attribute the sandbox refuses (`''.__class__`, `|attr('__class__')`), a
syntax error, an exception raised by a context function — becomes one
`TemplateRenderError` whose message names the template file and line.

Cost per email (bench/bench_render.py, starter yoga/tripwire-offer, CPU time
on the shared 2-CPU development machine): Jinja ≈ 0.07–0.09 ms (subject,
preheader and body, with the token signing the context functions do),
css-inline ≈ 0.06–0.09 ms, text from HTML ≈ 0.07–0.11 ms; `render` as a whole
≈ 0.26–0.34 ms. A subject or preheader without Jinja syntax is kept as text,
not rendered.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from types import TracebackType
from typing import Any

import css_inline
from jinja2 import Template, TemplateError, TemplateNotFound, TemplateSyntaxError

from autofunnel.errors import TemplateRenderError
from autofunnel.mail.templates import FrontMatterError, make_environment, split_front_matter

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    preheader: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class _Compiled:
    path: Path
    subject: Template | str  # str: plain text with no Jinja in it, nothing to render
    subject_line: int
    preheader: Template | str | None
    preheader_line: int
    body: Template
    text: Template | None


class Renderer:
    """Renders the emails of one `templates/` folder; safe to share between threads."""

    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = Path(templates_dir)
        self._root = str(self.templates_dir.resolve())
        self.environment = make_environment(self.templates_dir)
        self._inliner = css_inline.CSSInliner(
            keep_style_tags=False,
            keep_at_rules=True,
            keep_link_tags=False,
            load_remote_stylesheets=False,
        )
        self._compiled: dict[tuple[str, str], _Compiled] = {}
        self._lock = threading.Lock()

    # Compilation ---------------------------------------------------------------

    def _get(self, folder: str, name: str) -> _Compiled:
        key = (folder, name)
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(key)
                if compiled is None:
                    compiled = self._compile(folder, name)
                    self._compiled[key] = compiled
        return compiled

    def _compile(self, folder: str, name: str) -> _Compiled:
        if not _NAME.match(folder) or not _NAME.match(name) or ".." in folder or ".." in name:
            raise TemplateRenderError(f"bad template name {folder!r}/{name!r}")
        template_name = f"{folder}/{name}.html"
        path = self.templates_dir / folder / f"{name}.html"
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TemplateRenderError(f"{path}: email template not found", path=str(path)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateRenderError(f"{path}: cannot read the template: {exc}", path=str(path)) from None
        try:
            front, _ = split_front_matter(source)
        except FrontMatterError as exc:
            raise TemplateRenderError(f"{path}:{exc.line}: {exc.message}", path=str(path), line=exc.line) from None
        if front is None or "subject" not in front.values:
            raise TemplateRenderError(f"{path}:1: an email needs front matter with a subject", path=str(path), line=1)

        def text_template(key: str) -> Template | str:
            line = front.lines[key]
            if not any(marker in front.values[key] for marker in ("{{", "{%", "{#")):
                return front.values[key]
            try:
                # A name ending in .txt turns autoescape off: subject and preheader are plain text.
                code = self.environment.compile(front.values[key], name=f"{template_name}#{key}.txt", filename=str(path))
            except TemplateSyntaxError as exc:
                at = line + (exc.lineno or 1) - 1
                raise TemplateRenderError(f"{path}:{at}: {key}: {exc.message}", path=str(path), line=at) from None
            return self.environment.template_class.from_code(self.environment, code, self.environment.make_globals(None))

        subject = text_template("subject")
        preheader = text_template("preheader") if "preheader" in front.values else None
        body = self._load(template_name)
        text = None
        if (self.templates_dir / folder / f"{name}.txt").is_file():
            text = self._load(f"{folder}/{name}.txt")
        return _Compiled(
            path=path,
            subject=subject,
            subject_line=front.lines["subject"],
            preheader=preheader,
            preheader_line=front.lines.get("preheader", 1),
            body=body,
            text=text,
        )

    def _load(self, template_name: str) -> Template:
        try:
            return self.environment.get_template(template_name)
        except TemplateSyntaxError as exc:
            where = exc.filename or str(self.templates_dir / template_name)
            raise TemplateRenderError(f"{where}:{exc.lineno}: {exc.message}", path=where, line=exc.lineno) from None
        except TemplateNotFound as exc:
            raise TemplateRenderError(f"{self.templates_dir / template_name}: template not found: {exc.name}") from None

    # Rendering -----------------------------------------------------------------

    def render(self, folder: str, name: str, context: Mapping[str, Any]) -> RenderedEmail:
        """Render `templates/<folder>/<name>.html` (and its `.txt` twin) with `context`."""
        compiled = self._get(folder, name)
        subject = compiled.subject
        if not isinstance(subject, str):
            subject = self._run(subject, context, compiled.path, compiled.subject_line, "subject")
        subject = _LINE_BREAKS.sub(" ", subject).strip()
        preheader = compiled.preheader or ""
        if not isinstance(preheader, str):
            preheader = self._run(preheader, context, compiled.path, compiled.preheader_line, "preheader")
        preheader = preheader.strip()
        full = {**context, "subject": subject, "preheader": preheader}
        html = self._run(compiled.body, full, compiled.path, 0, None)
        try:
            inlined = self._inliner.inline(html)
        except Exception as exc:  # css_inline.InlineError and friends
            raise TemplateRenderError(f"{compiled.path}: cannot inline the CSS: {exc}", path=str(compiled.path)) from None
        if compiled.text is not None:
            text = self._run(compiled.text, full, compiled.path.with_suffix(".txt"), 0, None)
        else:
            text = html_to_text(html)
        return RenderedEmail(subject=subject, preheader=preheader, html=inlined, text=text)

    def _run(self, template: Template, context: Mapping[str, Any], path: Path, line_offset: int, part: str | None) -> str:
        try:
            return template.render(context)
        except TemplateSyntaxError as exc:  # e.g. an {% extends %}-ed layout that does not parse
            where = exc.filename or str(path)
            raise TemplateRenderError(f"{where}:{exc.lineno}: {exc.message}", path=where, line=exc.lineno) from None
        except Exception as exc:  # everything a template raises is a template error
            where, line = self._locate(exc.__traceback__, path)
            if part is not None:
                where, line = str(path), line_offset + (line or 1) - 1
            label = f"{part}: " if part else ""
            kind = "" if isinstance(exc, TemplateError) else f"{type(exc).__name__}: "
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            location = f"{where}:{line}" if line else where
            raise TemplateRenderError(f"{location}: {label}{kind}{message}", path=where, line=line) from exc

    def _locate(self, tb: TracebackType | None, default: Path) -> tuple[str, int | None]:
        """The innermost template file and line in a (Jinja-rewritten) traceback."""
        found: tuple[str, int | None] = (str(default), None)
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename.startswith(self._root) or filename.startswith(str(self.templates_dir)):
                found = (filename, tb.tb_lineno)
            tb = tb.tb_next
        return found


# HTML → text ----------------------------------------------------------------------
#
# A regular-expression tokenizer rather than html.parser.HTMLParser: the same
# result for email HTML at about a fifth of the cost (HTMLParser took ~0.4 ms for
# the starter layout, the whole budget of an email).

_TOKEN = re.compile(
    r"""<(/?)([A-Za-z][A-Za-z0-9:-]*)([^>"']*(?:(?:"[^"]*"|'[^']*')[^>"']*)*)>"""  # start or end tag
    r"""|<!--.*?(?:-->|$)"""  # comment (unterminated: to the end)
    r"""|<[!?][^>]*>"""  # doctype, processing instruction
    r"""|([^<]+|<)""",  # text (a lone '<' is text too)
    re.DOTALL,
)
_BODY = re.compile(r"<body[\s>]", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""")
_SKIPPED = frozenset({"head", "style", "script", "title", "template", "noscript", "svg"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "blockquote", "pre", "table", "dl", "hr"})
_LINES = frozenset({"div", "tr", "li", "section", "article", "header", "footer", "address", "center", "dt", "dd", "tbody", "thead", "tfoot", "caption"})
_CELLS = frozenset({"td", "th"})
_DISPLAY_NONE = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _hidden(raw: str) -> bool:
    """Whether a tag's raw attribute text hides it: `hidden`, `display: none`, class `preheader`."""
    lowered = raw.lower()
    if "none" not in lowered and "preheader" not in lowered and "hidden" not in lowered:
        return False
    for match in _ATTRIBUTE.finditer(raw):
        name = match.group(1).lower()
        value = match.group(2) or match.group(3) or match.group(4) or ""
        if name == "hidden":
            return True
        if name == "style" and _DISPLAY_NONE.search(value):
            return True
        if name == "class" and "preheader" in value.lower().split():
            return True
    return False


def _attribute(raw: str, wanted: str) -> str | None:
    """The unescaped value of attribute `wanted` in a tag's raw attribute text."""
    for match in _ATTRIBUTE.finditer(raw):
        if match.group(1).lower() == wanted:
            value = match.group(2)
            if value is None:
                value = match.group(3)
            if value is None:
                value = match.group(4)
            return unescape(value) if value is not None else ""
    return None


class _Text:
    """Accumulates plain text as a reader sees the HTML."""

    __slots__ = ("bullet", "cell", "line_start", "links", "lists", "parts", "pending", "space", "started")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pending = 0  # newlines owed before the next text
        self.space = False  # a space owed before the next text
        self.cell = False  # a cell separator owed before the next text of the same row
        self.line_start = True
        self.started = False
        self.lists: list[list[Any]] = []  # [tag, counter]
        self.bullet: str | None = None
        self.links: list[tuple[str | None, int, list[str]]] = []  # (href, parts index, alts of images)

    def newline(self, count: int) -> None:
        if self.started and count > self.pending:
            self.pending = count

    def emit(self, text: str) -> None:
        parts = self.parts
        if self.pending:
            parts.append("\n" * self.pending)
            self.pending = 0
            self.line_start = True
            self.space = False
            self.cell = False
        if self.line_start:
            if self.lists:
                parts.append("  " * (len(self.lists) - 1))
            if self.bullet is not None:
                parts.append(self.bullet)
                self.bullet = None
        elif self.cell:
            parts.append(" | ")
        elif self.space:
            parts.append(" ")
        self.space = False
        self.cell = False
        parts.append(text)
        self.line_start = False
        self.started = True

    def words(self, data: str) -> None:
        words = data.split()
        if not words:
            if not self.line_start:
                self.space = True
            return
        if data[0].isspace() and not self.line_start:
            self.space = True
        self.emit(" ".join(words))
        if data[-1].isspace():
            self.space = True

    def close_link(self) -> None:
        href, start, alts = self.links.pop()
        if not href:
            return
        lowered = href[:8].lower()
        if lowered.startswith(("mailto:", "tel:")):
            shown = href.split(":", 1)[1].split("?", 1)[0]
        elif lowered.startswith(("http://", "https://")):
            shown = href
        else:
            return  # #anchors, relative links: nothing a reader can follow from plain text
        text = "".join(self.parts[start:]).strip()
        if not text:
            if not alts:
                self.emit(shown)
                return
            text = " ".join(alts)
            self.emit(text)
        if text == shown or text.rstrip("/") == shown.rstrip("/"):
            return
        self.parts.append(f" ({shown})")
        self.line_start = False

    def result(self) -> str:
        text = "".join(self.parts)
        text = _TRAILING_SPACE.sub("\n", text)
        text = _MANY_NEWLINES.sub("\n\n", text).strip("\n")
        if _LONG_LINE.search(text):
            text = "\n".join(line if len(line) <= TEXT_WIDTH else _wrap(line) for line in text.split("\n"))
        return text + "\n" if text else ""


TEXT_WIDTH = 78
"""Plain-text lines are wrapped at this many characters (RFC 5322's "should"), words and URLs kept whole."""
_LONG_LINE = re.compile(rf"[^\n]{{{TEXT_WIDTH + 1}}}")
_HANGING = re.compile(r"^(\s*(?:- |\d+\. )?)")


def _wrap(line: str) -> str:
    """One long line broken at spaces into lines of at most TEXT_WIDTH characters.

    A word longer than the width (a URL) stands alone on its line, unbroken, so it
    stays clickable; list items continue under their text, not under the bullet.
    """
    indent = " " * len(_HANGING.match(line).group(1))  # type: ignore[union-attr]
    lines: list[str] = []
    current = ""
    for word in line.split(" "):
        if not word:
            continue
        if not current:
            current = (indent if lines else line[: len(line) - len(line.lstrip())]) + word
        elif len(current) + 1 + len(word) <= TEXT_WIDTH:
            current += " " + word
        else:
            lines.append(current)
            current = indent + word
    if current:
        lines.append(current)
    return "\n".join(lines)


def html_to_text(html: str) -> str:
    """Readable plain text from an email's HTML (the text part when there is no `.txt` twin).

    Paragraphs and headings are separated by a blank line, `<br>` and table rows
    break lines, list items start with `- ` (or `1. `), a link reads `text (url)`,
    and `<head>`, `<style>`, scripts and hidden elements (`display: none`, the
    `preheader` class, `hidden`) are left out.
    """
    out = _Text()
    skip_tag: str | None = None
    skip_depth = 0
    pre = 0
    body = _BODY.search(html)  # the head is skipped anyway: start at <body>
    for closing, tag, attributes, data in _TOKEN.findall(html, body.start() if body else 0):
        if data:
            if skip_tag is not None:
                continue
            if not pre and data.isspace():
                if not out.line_start:
                    out.space = True
                continue
            if "&" in data:
                data = unescape(data)
            if pre:
                for index, line in enumerate(data.split("\n")):
                    if index:
                        out.pending = max(out.pending, 1)
                    if line:
                        out.emit(line)
            else:
                out.words(data)
            continue
        if not tag:
            continue  # comment, doctype
        tag = tag.lower()
        if closing:
            if skip_tag is not None:
                if tag == skip_tag:
                    skip_depth -= 1
                    if skip_depth == 0:
                        skip_tag = None
                continue
            if tag in _PARAGRAPHS:
                if tag == "pre" and pre:
                    pre -= 1
                elif (tag == "ul" or tag == "ol") and out.lists:
                    out.lists.pop()
                out.newline(1 if out.lists else 2)
            elif tag in _LINES:
                out.newline(1)
            elif tag == "a" and out.links:
                out.close_link()
            continue
        # start tag
        self_closing = attributes.endswith("/")
        if skip_tag is not None:
            if tag == skip_tag and not self_closing:
                skip_depth += 1
            continue
        if tag in _SKIPPED or (attributes and _hidden(attributes)):
            if tag not in _VOID and not self_closing:
                skip_tag, skip_depth = tag, 1
            continue
        if tag == "br":
            if out.started:
                out.pending = min(out.pending + 1, 2)
        elif tag in _PARAGRAPHS:
            if tag == "pre":
                out.newline(2)
                pre += 1
            elif tag == "ul" or tag == "ol":
                out.newline(1 if out.lists else 2)
                out.lists.append([tag, 0])
            else:
                out.newline(2)
        elif tag in _LINES:
            out.newline(1)
            if tag == "li":
                if out.lists and out.lists[-1][0] == "ol":
                    out.lists[-1][1] += 1
                    out.bullet = f"{out.lists[-1][1]}. "
                else:
                    out.bullet = "- "
        elif tag in _CELLS:
            if not out.line_start:
                out.cell = True  # the next cell's text comes after " | ", not run into this one's
        elif tag == "a":
            href = _attribute(attributes, "href")
            out.links.append((href.strip() if href else None, len(out.parts), []))
            if self_closing:
                out.close_link()
        elif tag == "img" and out.links:
            alt = _attribute(attributes, "alt")
            if alt and alt.strip():
                out.links[-1][2].append(alt.strip())
    return out.result()
