"""Click tracking and the open pixel, applied to an email's rendered HTML.

These run after `Renderer.render`, because their tokens name the delivery:

    rendered = renderer.render("yoga", "welcome", context)
    html = rewrite_links(rendered.html, lambda url: click_url(delivery_id, url), keep={unsubscribe_url})
    html = add_open_pixel(html, open_url(delivery_id))

`rewrite_links` scans the `<a …>` start tags only, with a regular expression that
knows attribute quoting (a `>` inside a quoted attribute value does not end the
tag), so the text between tags is never touched. The `href` in HTML is
entity-escaped (`?a=1&amp;b=2`); the function passed in receives the real URL
(`?a=1&b=2`), and its answer is escaped again before it goes back in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from html import escape, unescape

# A start tag `<a ...>`: attribute values may be "double", 'single' or bare, and a
# quoted value may contain `>`. The name must end (space, `/` or `>`), so `<abbr>`
# and `<area>` are not anchors.
_A_TAG = re.compile(r"""<a(?=[\s/>])(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
# One attribute inside such a tag: its name, and its value in one of three forms.
_ATTRIBUTE = re.compile(
    r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""",
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)

# HTML strips ASCII whitespace around a URL attribute.
_URL_SPACE = " \t\n\r\f"


def _href_span(tag: str) -> tuple[int, int, str] | None:
    """Where the href attribute's whole `href=…` sits in `tag`, and its raw value."""
    position = 2  # after "<a"
    end = len(tag) - 1  # before ">"
    while position < end:
        match = _ATTRIBUTE.search(tag, position, end)
        if match is None:
            return None
        name = match.group(1)
        if name.lower() == "href":
            for group in (2, 3, 4):
                value = match.group(group)
                if value is not None:
                    return match.start(), match.end(), value
            return None  # `href` with no value
        position = match.end()
    return None


def rewrite_links(html: str, click_url: Callable[[str], str], keep: Collection[str] = ()) -> str:
    """Replace each `<a href>` pointing at an http(s) URL by `click_url(url)`.

    `mailto:`, `tel:`, `#anchors`, relative links and every URL in `keep` (the
    unsubscribe link) stay as they are. Only the `href` attribute changes; the
    rest of the tag, and everything outside `<a …>` tags, is left byte for byte.
    """

    def replace(match: re.Match[str]) -> str:
        tag = match.group(0)
        found = _href_span(tag)
        if found is None:
            return tag
        start, end, raw = found
        url = unescape(raw).strip(_URL_SPACE)
        scheme = url[:8].lower()
        if not (scheme.startswith("https://") or scheme.startswith("http://")) or url in keep:
            return tag
        return f'{tag[:start]}href="{escape(click_url(url), quote=True)}"{tag[end:]}'

    if "<a" not in html and "<A" not in html:
        return html
    return _A_TAG.sub(replace, html)


def add_open_pixel(html: str, pixel_url: str) -> str:
    """Add a 1×1 image loading `pixel_url` just before `</body>` (or at the end)."""
    pixel = (
        f'<img src="{escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0;">'
    )
    at = html.rfind("</body>")
    if at < 0:
        ends = [match.start() for match in _BODY_END.finditer(html)]
        if not ends:
            return html + pixel
        at = ends[-1]
    return f"{html[:at]}{pixel}{html[at:]}"
