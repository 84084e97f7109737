"""Rendering emails (templates → subject, HTML, text), links and pixel, and the MIME bytes."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autofunnel.mail.links import add_open_pixel, rewrite_links
from autofunnel.mail.message import (
    AddressError,
    build_message,
    delivery_id_from_message_id,
    format_address,
    message_id_for,
    sign_dkim,
)
from autofunnel.mail.render import Renderer, RenderedEmail, TemplateRenderError, html_to_text

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
DEADLINE = datetime(2026, 3, 5, 18, 30, tzinfo=UTC)


def starter_context(first_name: str | None = "Zoë", **overrides: Any) -> dict[str, Any]:
    """What the delivery service passes: a realistic lead, funnel, event and the link functions."""
    context: dict[str, Any] = {
        "lead": {
            "email": "zoe@example.com",
            "first_name": first_name,
            "fields": {"phone": "+33 1 23 45 67 89", "segment": "beginner"},
            "tags": ["yoga", "magnet"],
            "timezone": "Europe/Paris",
        },
        "funnel": {"slug": "yoga", "title": "Yoga for beginners"},
        "event": {
            "cart_id": "c-9",
            "items": [
                {"name": "Cork yoga mat", "quantity": 1, "price": 39.0},
                {"name": "Block & strap", "quantity": 2, "price": 9.5},
            ],
            "value": 58.0,
            "currency": "EUR",
            "checkout_url": "https://shop.example/checkout?cart=c-9&step=pay",
        },
        "deadline": lambda name: DEADLINE,
        "offer_url": lambda name: f"https://go.example/o/OFFER-{name}",
        "countdown_url": lambda name: f"https://go.example/countdown/CD-{name}.gif",
        "unsubscribe_url": "https://go.example/u/UNSUB",
        "postal_address": "Anna Yoga, 1 rue de la Paix, 75002 Paris",
    }
    context.update(overrides)
    return context


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES)


def write_template(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")


# Rendering the starter templates ------------------------------------------------------------


def test_tripwire_offer_renders_subject_preheader_inlined_html_and_text(renderer: Renderer) -> None:
    rendered = renderer.render("yoga", "tripwire-offer", starter_context())

    assert rendered.subject == "Zoë, ready for your first week of yoga?"
    assert rendered.preheader == "The 7-day mini-course at the early price, for 48 hours"
    html = rendered.html
    assert "<title>Zoë, ready for your first week of yoga?</title>" in html
    assert "The 7-day mini-course at the early price, for 48 hours</span>" in html
    # the layout's <style> rules are now style= attributes, and the block is gone
    assert "<style" not in html
    assert re.search(r'<p style="[^"]*margin: 0 0 16px 0', html)
    assert re.search(r'<a class="button" href="https://go.example/o/OFFER-mini-course" style="[^"]*background-color: #2f6f5e', html)
    # the deadline in the lead's time zone (Europe/Paris is UTC+1 in March)
    assert "Thu 05 Mar 2026, 19:30 CET" in html
    assert 'src="https://go.example/countdown/CD-tripwire.gif"' in html

    text = rendered.text
    assert text.startswith("Hi Zoë,\n\nHow did the first poses feel?")
    assert "Start the mini-course (https://go.example/o/OFFER-mini-course)" in text
    assert "See you on the mat,\nAnna" in text
    assert "Unsubscribe (https://go.example/u/UNSUB)" in text
    assert "Anna Yoga, 1 rue de la Paix, 75002 Paris" in text
    assert "early price, for 48 hours" not in text  # the hidden preheader stays out
    assert "{" not in text and "margin" not in text  # no CSS
    assert "<" not in text


def test_welcome_uses_its_txt_twin_without_html_escaping(renderer: Renderer) -> None:
    rendered = renderer.render("yoga", "welcome", starter_context(first_name="Tom & <Jerry>"))

    assert rendered.subject == "Tom & <Jerry>, your yoga guide is inside"  # plain text, not &amp;
    assert "Hi Tom &amp; &lt;Jerry&gt;," in rendered.html  # escaped in HTML
    assert rendered.text.startswith("Hi Tom & <Jerry>,\n\nWelcome!")  # raw in text
    assert "Download your free guide:\nhttps://yoga.example/guide.pdf" in rendered.text
    assert "Unsubscribe: https://go.example/u/UNSUB" in rendered.text


def test_cart_reminder_lists_the_items_of_the_event(renderer: Renderer) -> None:
    rendered = renderer.render("abandoned-cart", "cart-1", starter_context(first_name=None))

    assert rendered.subject == "Hi, you left something in your cart"
    assert "1 × Cork yoga mat | 39.00 EUR" in rendered.text
    assert "2 × Block & strap | 9.50 EUR" in rendered.text
    assert "Total | 58.00 EUR" in rendered.text
    assert "Complete your order (https://shop.example/checkout?cart=c-9&step=pay)" in rendered.text
    assert 'href="https://shop.example/checkout?cart=c-9&amp;step=pay"' in rendered.html
    assert re.search(r'<td style="[^"]*border-bottom: 1px solid #eeeeee', rendered.html)


@pytest.mark.parametrize(
    "folder, name",
    [(path.parent.name, path.stem) for path in sorted(TEMPLATES.glob("*/*.html")) if path.parent.name != "layouts"],
)
def test_every_starter_email_renders(renderer: Renderer, folder: str, name: str) -> None:
    rendered = renderer.render(folder, name, starter_context())
    assert rendered.subject and "\n" not in rendered.subject
    assert rendered.html.lstrip().lower().startswith("<!doctype html>")
    assert rendered.text.strip()


def test_rendered_email_is_a_frozen_record(renderer: Renderer) -> None:
    rendered = renderer.render("yoga", "welcome", starter_context())
    assert isinstance(rendered, RenderedEmail)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rendered.subject = "changed"  # type: ignore[misc]


def test_the_renderer_compiles_each_template_once(renderer: Renderer) -> None:
    renderer.render("yoga", "welcome", starter_context())
    compiled = renderer._compiled[("yoga", "welcome")]
    renderer.render("yoga", "welcome", starter_context(first_name="Ann"))
    assert renderer._compiled[("yoga", "welcome")] is compiled


def test_the_caller_s_context_is_not_changed(renderer: Renderer) -> None:
    context = starter_context()
    before = dict(context)
    renderer.render("yoga", "welcome", context)
    assert context == before and "subject" not in context


# Subject, preheader, CSS --------------------------------------------------------------------------


def test_subject_is_stripped_of_line_breaks(tmp_path: Path) -> None:
    write_template(tmp_path, "f/a.html", '---\nsubject: "  {{ lead.first_name }}\\r\\n  says\\nhi  "\npreheader: "{{ lead.first_name }} & co"\n---\n<p>x</p>\n')
    rendered = Renderer(tmp_path).render("f", "a", starter_context(first_name="Ann\nBob"))
    assert rendered.subject == "Ann Bob says hi"
    assert rendered.preheader == "Ann\nBob & co"  # plain text; the layout escapes it where shown


def test_subject_and_preheader_reach_the_layout(tmp_path: Path) -> None:
    write_template(tmp_path, "layouts/l.html", "<html><head><title>{{ subject }}</title></head><body><i>{{ preheader }}</i>{% block body %}{% endblock %}</body></html>")
    write_template(tmp_path, "f/a.html", '---\nsubject: "A < B"\npreheader: "P & Q"\n---\n{% extends "layouts/l.html" %}{% block body %}<p>{{ subject }}</p>{% endblock %}\n')
    rendered = Renderer(tmp_path).render("f", "a", starter_context())
    assert "<title>A &lt; B</title>" in rendered.html
    assert "<i>P &amp; Q</i>" in rendered.html
    assert "<p>A &lt; B</p>" in rendered.html
    assert rendered.subject == "A < B"


def test_media_queries_stay_in_a_style_block_while_rules_are_inlined(tmp_path: Path) -> None:
    write_template(
        tmp_path,
        "f/a.html",
        "---\nsubject: s\n---\n<html><head><style>"
        ".x { color: red; } @media (max-width: 600px) { .x { color: blue !important; } }"
        "</style></head><body><p class=\"x\">hi</p></body></html>\n",
    )
    html = Renderer(tmp_path).render("f", "a", starter_context()).html
    assert '<p class="x" style="color: red;">hi</p>' in html
    assert "@media (max-width: 600px)" in html
    assert html.count("<style") == 1


def test_remote_stylesheets_are_never_fetched(tmp_path: Path) -> None:
    write_template(tmp_path, "f/a.html", '---\nsubject: s\n---\n<html><head><link rel="stylesheet" href="http://127.0.0.1:9/x.css"></head><body><p>hi</p></body></html>\n')
    rendered = Renderer(tmp_path).render("f", "a", starter_context())
    assert "<p>hi</p>" in rendered.html


def test_front_matter_without_jinja_is_taken_as_it_is(tmp_path: Path) -> None:
    write_template(tmp_path, "f/a.html", '---\nsubject: "50% off {today} & more"\npreheader: "  {not jinja}  "\n---\n<p>x</p>\n')
    rendered = Renderer(tmp_path).render("f", "a", starter_context())
    assert (rendered.subject, rendered.preheader) == ("50% off {today} & more", "{not jinja}")


def test_a_template_without_preheader_gives_an_empty_one(tmp_path: Path) -> None:
    write_template(tmp_path, "f/a.html", "---\nsubject: s\n---\n<p>{{ preheader }}|</p>\n")
    rendered = Renderer(tmp_path).render("f", "a", starter_context())
    assert rendered.preheader == ""
    assert "<p>|</p>" in rendered.html


# Errors ---------------------------------------------------------------------------------------------


def test_an_undefined_variable_names_the_file_and_line(tmp_path: Path) -> None:
    write_template(tmp_path, "f/a.html", "---\nsubject: s\n---\n<p>ok</p>\n<p>{{ lead.nickname }}</p>\n")
    with pytest.raises(TemplateRenderError) as caught:
        Renderer(tmp_path).render("f", "a", starter_context())
    message = str(caught.value)
    assert f"{tmp_path / 'f' / 'a.html'}:5:" in message
    assert "nickname" in message
    assert caught.value.line == 5


def test_an_error_in_the_subject_names_the_front_matter_line(tmp_path: Path) -> None:
    write_template(tmp_path, "f/a.html", "---\npreheader: p\nsubject: \"{{ lead.nickname }}\"\n---\n<p>ok</p>\n")
    with pytest.raises(TemplateRenderError, match=r"a\.html:3: subject: .*nickname"):
        Renderer(tmp_path).render("f", "a", starter_context())


def test_an_error_in_the_layout_names_the_layout(tmp_path: Path) -> None:
    write_template(tmp_path, "layouts/l.html", "<html>\n<body>\n{{ missing_thing }}\n{% block body %}{% endblock %}</body></html>")
    write_template(tmp_path, "f/a.html", '---\nsubject: s\n---\n{% extends "layouts/l.html" %}{% block body %}x{% endblock %}\n')
    with pytest.raises(TemplateRenderError, match=r"layouts/l\.html:3: .*missing_thing"):
        Renderer(tmp_path).render("f", "a", starter_context())


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    write_template(tmp_path, "f/a.html", "---\nsubject: s\n---\n<p>\n{% if x %}\n</p>\n")
    with pytest.raises(TemplateRenderError, match=r"a\.html:\d+: .*(endif|end of template)"):
        Renderer(tmp_path).render("f", "a", starter_context())


def test_an_exception_from_a_context_function_is_a_render_error(tmp_path: Path) -> None:
    write_template(tmp_path, "f/a.html", "---\nsubject: s\n---\n<p>\n{{ deadline('nope') }}</p>\n")

    def deadline(name: str) -> datetime:
        raise KeyError(f"no deadline {name!r}")

    with pytest.raises(TemplateRenderError, match=r"a\.html:5: KeyError: .*no deadline 'nope'"):
        Renderer(tmp_path).render("f", "a", starter_context(deadline=deadline))


@pytest.mark.parametrize(
    "name, source",
    [
        ("missing", None),
        ("no-subject", "---\npreheader: p\n---\n<p>x</p>"),
        ("no-front-matter", "<p>x</p>"),
        ("bad-key", "---\nsubjet: s\n---\n<p>x</p>"),
    ],
)
def test_broken_emails_are_render_errors(tmp_path: Path, name: str, source: str | None) -> None:
    if source is not None:
        write_template(tmp_path, f"f/{name}.html", source)
    with pytest.raises(TemplateRenderError, match=name):
        Renderer(tmp_path).render("f", name, starter_context())


@pytest.mark.parametrize("folder, name", [("..", "x"), ("f", "../../etc/passwd"), ("f/g", "a"), ("", "a"), ("f", ".hidden")])
def test_template_names_cannot_leave_the_templates_folder(tmp_path: Path, folder: str, name: str) -> None:
    with pytest.raises(TemplateRenderError, match="bad template name"):
        Renderer(tmp_path).render(folder, name, starter_context())


SANDBOX_ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''|attr('__class__') }}",
    "{{ (''|attr('__class__')|attr('__mro__'))[1] }}",
    "{{ lead.__class__ }}",
    "{{ lead|attr('__init__') }}",
    "{{ deadline.__globals__ }}",
    "{{ deadline.__code__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ ''.format.__self__ }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ '{x.__class__}'.format_map({'x': ''}) }}",
    "{{ lipsum.__globals__['os'] }}",
]


@pytest.mark.parametrize("expression", SANDBOX_ESCAPES)
def test_the_sandbox_refuses_python_internals(tmp_path: Path, expression: str) -> None:
    write_template(tmp_path, "f/a.html", f"---\nsubject: s\n---\n<p>{expression}</p>\n")
    with pytest.raises(TemplateRenderError) as caught:
        Renderer(tmp_path).render("f", "a", starter_context())
    assert "a.html:4" in str(caught.value)
    assert re.search(r"unsafe|undefined|has no attribute", str(caught.value), re.IGNORECASE)


@pytest.mark.parametrize("expression", ["{{ ''.__class__ }}", "{{ ''|attr('__class__') }}"])
def test_the_sandbox_also_guards_the_subject(tmp_path: Path, expression: str) -> None:
    write_template(tmp_path, "f/a.html", f'---\nsubject: "{expression}"\n---\n<p>x</p>\n')
    with pytest.raises(TemplateRenderError, match="unsafe"):
        Renderer(tmp_path).render("f", "a", starter_context())


# HTML → text -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "html, text",
    [
        ("<p>One</p><p>Two</p>", "One\n\nTwo\n"),
        ("<p>a<br>b<br/>c</p>", "a\nb\nc\n"),
        ("<p>a<br><br>b</p>", "a\n\nb\n"),
        ("<p>  lots   of\n\n  space  </p>", "lots of space\n"),
        ("<ul><li>one</li><li>two</li></ul>", "- one\n- two\n"),
        ("<ol><li>one</li><li>two</li></ol>", "1. one\n2. two\n"),
        ("<ul><li>a<ul><li>b</li></ul></li><li>c</li></ul>", "- a\n  - b\n- c\n"),
        ("<p>Go <a href='https://x.example/a?b=1&amp;c=2'>here</a>.</p>", "Go here (https://x.example/a?b=1&c=2).\n"),
        ('<a href="https://x.example/">https://x.example/</a>', "https://x.example/\n"),
        ('<a href="https://x.example/"><img src="i.png" alt="Logo"></a>', "Logo (https://x.example/)\n"),
        ('<a href="https://x.example/"><img src="i.png"></a>', "https://x.example/\n"),
        ('<a href="mailto:anna@yoga.example?subject=Hi">Write to me</a>', "Write to me (anna@yoga.example)\n"),
        ('<a href="#top">Top</a> <a href="/relative">rel</a>', "Top rel\n"),
        ("<head><title>T</title><style>p{color:red}</style></head><body><p>x</p></body>", "x\n"),
        ("<p>a</p><script>var x = '<p>';</script><p>b</p>", "a\n\nb\n"),
        ('<span class="preheader" style="display:none">hidden</span><p>shown</p>', "shown\n"),
        ('<div style="display: none"><p>in</p><div>deeper</div></div><p>out</p>', "out\n"),
        ('<div hidden>x</div><p>y</p>', "y\n"),
        ('<p style="overflow: hidden ">kept</p>', "kept\n"),
        ("<p>5 &lt; 6 &amp;&amp; caf&eacute; &#8364;&nbsp;1</p>", "5 < 6 && café €\xa01\n".replace("\xa0", " ")),
        ("<h1>Title</h1><p>body</p>", "Title\n\nbody\n"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>", "a | b\nc | d\n"),
        ("<pre>  keep\n    this</pre>", "  keep\n    this\n"),
        ("<!-- a comment <p>no</p> --><p>yes</p>", "yes\n"),
        ("<p><strong>bold</strong> and <em>em</em>, done</p>", "bold and em, done\n"),
        ("", ""),
        ("plain", "plain\n"),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


@given(st.text())
def test_html_to_text_takes_any_input(html: str) -> None:
    text = html_to_text(html)
    assert text == "" or (text.endswith("\n") and not text.endswith("\n\n"))
    if "<" not in html and "&" not in html:  # plain text: the same words come out
        assert text.split() == html.split()


@given(st.lists(st.text(alphabet=st.characters(exclude_characters="<&", exclude_categories=("Cs",)), min_size=1), max_size=6))
def test_paragraph_words_survive_and_tags_do_not(paragraphs: list[str]) -> None:
    html = "<html><head><style>p { color: red }</style></head><body>" + "".join(
        f'<p class="x">{paragraph}</p><br/>' for paragraph in paragraphs
    ) + "</body></html>"
    text = html_to_text(html)
    assert text.split() == [word for paragraph in paragraphs for word in paragraph.split()]


# Links and pixel ----------------------------------------------------------------------------------------


def tracker(seen: list[str]) -> Callable[[str], str]:
    def click_url(url: str) -> str:
        seen.append(url)
        return f"https://go.example/t/c/T{len(seen)}?x=1&y=2"

    return click_url


def test_http_links_are_rewritten_to_the_unescaped_url() -> None:
    seen: list[str] = []
    html = (
        '<p><a class="button" href="https://shop.example/a?x=1&amp;y=2" style="color: red;">Buy</a> '
        "<A HREF='http://shop.example/b'>b</A> "
        "<a title='a > b' data-href=\"https://no.example\" href=https://shop.example/c>c</a>"
        '<a href="  https://shop.example/d  ">d</a></p>'
    )
    out = rewrite_links(html, tracker(seen))
    assert seen == ["https://shop.example/a?x=1&y=2", "http://shop.example/b", "https://shop.example/c", "https://shop.example/d"]
    assert '<a class="button" href="https://go.example/t/c/T1?x=1&amp;y=2" style="color: red;">Buy</a>' in out
    assert "<A href=\"https://go.example/t/c/T2?x=1&amp;y=2\">b</A>" in out
    assert "<a title='a > b' data-href=\"https://no.example\" href=\"https://go.example/t/c/T3?x=1&amp;y=2\">c</a>" in out


def test_mailto_tel_anchors_relative_and_kept_links_stay() -> None:
    seen: list[str] = []
    html = (
        '<a href="mailto:anna@yoga.example">m</a><a href="tel:+331">t</a><a href="#top">#</a>'
        '<a href="/relative">r</a><a href="https://go.example/u/UNSUB?a=1&amp;b=2">Unsubscribe</a>'
        '<a name="x">no href</a><a href>empty</a><abbr href="https://x.example">abbr</abbr>'
        '<area href="https://x.example/area"><p>https://x.example/in-text</p>'
    )
    out = rewrite_links(html, tracker(seen), keep={"https://go.example/u/UNSUB?a=1&b=2"})
    assert out == html
    assert seen == []


def test_a_url_with_quotes_is_escaped_into_the_attribute() -> None:
    out = rewrite_links('<a href="https://x.example/">x</a>', lambda url: 'https://go.example/t/c/"><script>')
    assert out == '<a href="https://go.example/t/c/&quot;&gt;&lt;script&gt;">x</a>'


ANCHOR_PATTERN = re.compile(r"<a[\s/>]", re.IGNORECASE)
plain_text = st.text().filter(lambda text: not ANCHOR_PATTERN.search(text))
urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}.example/{path}",
    st.sampled_from(["http", "https", "HTTPS"]),
    st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True),
    st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")), max_size=20),
)


@given(plain_text)
def test_text_without_anchors_is_untouched(text: str) -> None:
    assert rewrite_links(text, lambda url: "https://go.example/t/c/X") == text


@given(st.lists(st.tuples(plain_text, urls, st.sampled_from(['"', "'"]), plain_text), max_size=5), plain_text)
@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
def test_only_hrefs_change_and_the_tracker_gets_each_real_url(pieces: list[tuple[str, str, str, str]], tail: str) -> None:
    from html import escape

    source, expected, originals = [], [], []
    for index, (before, url, quote, label) in enumerate(pieces):
        escaped = escape(url, quote=True)
        source.append(f"{before}<a class=x href={quote}{escaped}{quote} id=a{index}>{escape(label)}</a>")
        expected.append(f'{before}<a class=x href="https://go.example/t/c/{index}" id=a{index}>{escape(label)}</a>')
        originals.append(url.strip(" \t\n\r\f"))
    source.append(tail)
    expected.append(tail)
    seen: list[str] = []

    def click_url(url: str) -> str:
        seen.append(url)
        return f"https://go.example/t/c/{len(seen) - 1}"

    assert rewrite_links("".join(source), click_url) == "".join(expected)
    assert seen == originals


def test_the_open_pixel_goes_just_before_the_body_end() -> None:
    out = add_open_pixel("<html><body><p>x</p></body></html>", "https://go.example/t/o/T?a=1&b=2")
    assert out.startswith("<html><body><p>x</p><img src=\"https://go.example/t/o/T?a=1&amp;b=2\" width=\"1\" height=\"1\" alt=\"\"")
    assert out.endswith("></body></html>")
    assert add_open_pixel("<BODY>x</BODY >", "https://p").count("<img") == 1
    assert add_open_pixel("<BODY>x</BODY >", "https://p").endswith("></BODY >")
    assert add_open_pixel("<p>fragment</p>", "https://p").startswith("<p>fragment</p><img ")


# MIME ------------------------------------------------------------------------------------------------------

NOW = datetime(2026, 3, 3, 9, 15, 42, tzinfo=timezone(timedelta(hours=1)))
LIST_HEADERS = {
    "List-Unsubscribe": "<https://go.example/u/eyJkIjo0Mn0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmUtc2lnbmF0dXI>, <mailto:unsubscribe@yoga.example?subject=unsubscribe-d42>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
}


def build(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "sender": "Anna from Yoga <anna@yoga.example>",
        "to": "Zoë Ångström <zoe@example.com>",
        "subject": "Zoë, ready for your first week of yoga?",
        "html": "<html><body><p>Hi Zoë</p></body></html>\n",
        "text": "Hi Zoë\n",
        "message_id": message_id_for(42, "yoga.example"),
        "date": NOW,
        "headers": LIST_HEADERS,
        "domain": "yoga.example",
    }
    arguments.update(overrides)
    return build_message(**arguments)


def parse_strictly(raw: bytes) -> EmailMessage:
    """Parse under policy.strict and check the wire rules every message must keep."""
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b""), "a bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "a bare CR"
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    for line in head.split(b"\r\n"):
        assert len(line) <= 998
        assert line.strip(), "a header line of white space only"
    message = email.message_from_bytes(raw, policy=email.policy.strict)
    assert isinstance(message, EmailMessage)
    for part in message.walk():
        assert part.defects == []
        for name, value in part.items():
            assert getattr(value, "defects", ()) == (), (name, value)
        if part["Content-Transfer-Encoding"] in ("quoted-printable", "base64"):
            encoded = part.get_payload(decode=False)
            assert isinstance(encoded, str)
            for line in encoded.split("\r\n"):
                assert len(line) <= 76, line  # RFC 2045: encoded lines of at most 76 characters
    return message


def display_name_as_read(raw: bytes, field: str) -> str:
    """The display name as an RFC 2047 reader shows it (white space between encoded-words ignored).

    Python's address parser puts a space between adjacent encoded-words, so it is
    not the judge for long non-ASCII names; `email.header.decode_header` is.
    """
    from email.header import decode_header, make_header

    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    value = re.search(rf"^{field}: (.*?)\r\n(?! )", head + "\r\n", re.MULTILINE | re.DOTALL)
    assert value is not None
    phrase = value.group(1).replace("\r\n", "")
    phrase = phrase[: phrase.rindex("<")].strip() if phrase.endswith(">") else ""
    if phrase.startswith('"'):
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return str(make_header(decode_header(phrase)))


def header_text(value: str) -> str:
    """What a header can carry: line breaks and tabs as spaces, no other ASCII control."""
    value = re.sub(r"[\r\n]+", " ", value).replace("\t", " ")
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", value)


def bodies(message: EmailMessage) -> tuple[str, str]:
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] in ("7bit", "quoted-printable", "base64")
    return parts[0].get_content(), parts[1].get_content()


def same_text(decoded: str, original: str) -> bool:
    """Line breaks go on the wire as CRLF; everything else comes back exactly."""
    return decoded.replace("\r\n", "\n") == original.replace("\r\n", "\n")


def test_message_headers_and_parts_parse_back() -> None:
    raw = build()
    message = parse_strictly(raw)
    assert message["Subject"] == "Zoë, ready for your first week of yoga?"
    assert message["From"].addresses[0].display_name == "Anna from Yoga"
    assert message["From"].addresses[0].addr_spec == "anna@yoga.example"
    assert message["To"].addresses[0].display_name == "Zoë Ångström"
    assert message["To"].addresses[0].addr_spec == "zoe@example.com"
    assert message["Message-ID"] == "<d42.autofunnel@yoga.example>"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime == NOW
    assert message["List-Unsubscribe"] == LIST_HEADERS["List-Unsubscribe"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = bodies(message)
    assert same_text(text, "Hi Zoë\n")
    assert same_text(html, "<html><body><p>Hi Zoë</p></body></html>\n")
    assert b"Subject: =?utf-8?b?" in raw  # RFC 2047, the raw header is ASCII


def test_message_ids_are_deterministic_and_can_be_traced_back() -> None:
    assert message_id_for(123, "yoga.example") == "<d123.autofunnel@yoga.example>"
    assert message_id_for(123, "yoga.example") == message_id_for(123, "yoga.example")
    assert message_id_for(7, "bücher.example") == "<d7.autofunnel@xn--bcher-kva.example>"
    assert delivery_id_from_message_id("<d123.autofunnel@yoga.example>") == 123
    assert delivery_id_from_message_id(" <d9.autofunnel@x> ") == 9
    assert delivery_id_from_message_id("<CAF123@mail.gmail.com>") is None
    for bad in (-1, True, "1", 1.0):
        with pytest.raises(ValueError):
            message_id_for(bad, "yoga.example")  # type: ignore[arg-type]


def test_each_body_takes_the_cheapest_safe_encoding() -> None:
    def encodings(text: str, html: str) -> list[str]:
        message = parse_strictly(build(text=text, html=html))
        return [part["Content-Transfer-Encoding"] for part in message.iter_parts()]

    assert encodings("plain ascii\n", "<p>x</p>") == ["7bit", "7bit"]
    assert encodings("café\n", "x" * 1200) == ["quoted-printable", "quoted-printable"]
    assert encodings("Всё хорошо, спасибо. " * 20, "<p>日本語のテキスト</p>" * 10) == ["base64", "base64"]
    assert encodings("bare\rcarriage return", "From the start\n") == ["base64", "quoted-printable"]
    raw = build(text="From me\nFrom you\n", html="<p>x</p>")
    assert b"\r\n=46rom me\r\n=46rom you" in raw
    assert b"\r\nFrom " not in raw.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("filler", ["x", "=", "é", " ", "ab=c "])
def test_long_from_lines_are_escaped_and_rewrapped(filler: str) -> None:
    text = "".join(f"From {filler * width}\n" for width in range(60, 90))
    raw = build(text=text, html="<p>From the start</p>")
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert b"\r\nFrom " not in body
    text_part, _ = bodies(parse_strictly(raw))
    assert same_text(text_part, text)


def test_long_lines_are_wrapped_for_the_wire_and_decode_exactly() -> None:
    text = "word " * 400 + "\n" + "x" * 3000 + "\n"
    html = "<p>" + "é" * 2000 + "</p>"
    message = parse_strictly(build(text=text, html=html))
    decoded_text, decoded_html = bodies(message)
    assert same_text(decoded_text, text)
    assert same_text(decoded_html, html)


def test_a_long_subject_and_display_name_fold_under_78_characters() -> None:
    subject = "Zoë, " + "a really long subject line about yoga " * 8
    name = "Zoë " + "Very-Long-Family-Name " * 8
    raw = build(subject=subject, to=format_address(name, "zoe@example.com"))
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if not line.startswith(b"List-Unsubscribe:"):
            assert len(line) <= 78, line
    message = parse_strictly(raw)
    assert message["Subject"] == subject
    assert display_name_as_read(raw, "To") == name.strip()
    assert " ".join(message["To"].addresses[0].display_name.split()) == name.strip()


def test_ascii_display_names_with_specials_are_quoted() -> None:
    raw = build(sender=format_address('Anna "Yoga" Smith, Paris \\ Berlin', "anna@yoga.example"))
    message = parse_strictly(raw)
    assert message["From"].addresses[0].display_name == 'Anna "Yoga" Smith, Paris \\ Berlin'
    assert len(message["From"].addresses) == 1


def test_bare_addresses_and_idna_domains() -> None:
    raw = build(sender="anna@yoga.example", to="zoe@bücher.example")
    message = parse_strictly(raw)
    assert message["From"].addresses[0].display_name == ""
    assert message["To"].addresses[0].addr_spec == "zoe@xn--bcher-kva.example"


@pytest.mark.parametrize("address", ["zoë@example.com", "no-at-sign", "a b@example.com", "@example.com", "zoe@exa mple.com"])
def test_addresses_that_cannot_be_written_are_refused(address: str) -> None:
    with pytest.raises(AddressError):
        build(to=address)


def test_header_injection_is_impossible() -> None:
    raw = build(subject="Hi\r\nBcc: victim@example.com", to=format_address("Zoë\r\nBcc: x@example.com", "zoe@example.com"))
    message = parse_strictly(raw)
    assert message["Bcc"] is None
    assert message["Subject"] == "Hi Bcc: victim@example.com"
    with pytest.raises(ValueError):
        build(headers={"X-Evil\r\nBcc": "x"})
    with pytest.raises(ValueError):
        build(headers={"Subject": "a second subject"})
    with pytest.raises(ValueError):
        build(headers={"List-Unsubscribe": "<https://x.example/ü>"})
    message = parse_strictly(build(headers={"List-Unsubscribe": "<https://x.example/u>\r\nBcc: y@example.com"}))
    assert message["Bcc"] is None


def test_extra_non_ascii_headers_are_encoded() -> None:
    message = parse_strictly(build(headers={**LIST_HEADERS, "X-Campaign": "Früh­ling 🌸", "Reply-To": "Anna Müller <anna@yoga.example>"}))
    assert message["X-Campaign"] == "Früh­ling 🌸"
    assert message["Reply-To"].addresses[0].display_name == "Anna Müller"
    assert message["Reply-To"].addresses[0].addr_spec == "anna@yoga.example"


def test_the_date_must_be_aware_and_the_message_id_well_formed() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build(date=datetime(2026, 3, 3, 9, 0))
    with pytest.raises(ValueError, match="Message-ID"):
        build(message_id="no-angle-brackets@x")
    message = parse_strictly(build(message_id=""))
    assert message["Message-ID"].endswith("@yoga.example>")


SPECIAL_LINES = st.sampled_from([
    "From the desk of Anna", "From ", ".", "..", ". leading dot", "trailing space   ", "tab\tinside\t",
    "=", "=3D", "=\r", "lone\rcarriage", "", " ", "x" * 1500, "é" * 700, "--boundary", "--=_af", "\x00nul", "\x0c",
    "\u2028line separator", "😀" * 300,
])
bodies_strategy = st.lists(st.one_of(st.text(), SPECIAL_LINES), max_size=8).map("\n".join) | st.text()
names = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=120)


@given(subject=st.text(max_size=300), name=names, text=bodies_strategy, html=bodies_strategy)
@example(subject="=?utf-8?q?not_encoded?=", name="=?utf-8?b?eA==?=", text="From x", html=".")
@example(subject=" leading and trailing ", name=' "quoted" ', text="\r", html="\r\n")
@example(subject="", name="", text="", html="")
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_every_message_parses_back_strictly_to_what_went_in(subject: str, name: str, text: str, html: str) -> None:
    raw = build(subject=subject, to=format_address(name, "zoe@example.com"), text=text, html=html)
    message = parse_strictly(raw)
    assert message["Subject"] == header_text(subject)
    expected_name = " ".join(header_text(name).split())
    assert display_name_as_read(raw, "To") == expected_name
    if len(expected_name.encode()) <= 45:  # one encoded-word: Python's parser reads it exactly too
        assert message["To"].addresses[0].display_name == expected_name
    assert message["To"].addresses[0].addr_spec == "zoe@example.com"
    decoded_text, decoded_html = bodies(message)
    assert same_text(decoded_text, text)
    assert same_text(decoded_html, html)


def test_control_characters_never_reach_a_header() -> None:
    raw = build(subject="a\x00b\x1b[31mc\td\x7f", to=format_address("Zo\x07ë", "zoe@example.com"))
    message = parse_strictly(raw)
    assert message["Subject"] == "ab[31mc d"
    assert message["To"].addresses[0].display_name == "Zoë"


# DKIM -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, bytes]:
    """(private key PEM, the DNS TXT record that publishes its public half)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def dns_for(record: bytes) -> Callable[..., bytes | None]:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"af2026._domainkey.yoga.example." else None

    return dnsfunc


def test_dkim_signature_verifies_and_covers_the_unsubscribe_headers(dkim_key: tuple[bytes, bytes]) -> None:
    import dkim

    private, record = dkim_key
    signed = sign_dkim(build(), "yoga.example", "af2026", private)
    assert signed.startswith(b"DKIM-Signature: ")
    assert dkim.verify(signed, dnsfunc=dns_for(record))

    message = parse_strictly(signed)
    tags = dict(
        item.strip().split("=", 1) for item in "".join(str(message["DKIM-Signature"]).split()).split(";") if "=" in item
    )
    signed_headers = tags["h"].split(":")
    for header in ("from", "to", "subject", "date", "message-id", "mime-version", "content-type", "list-unsubscribe", "list-unsubscribe-post"):
        assert header in signed_headers
    assert signed_headers.count("list-unsubscribe-post") == 2  # over-signed: none can be added
    assert tags["d"] == "yoga.example" and tags["s"] == "af2026" and tags["a"] == "rsa-sha256"


def test_dkim_fails_when_the_unsubscribe_headers_are_changed_or_added(dkim_key: tuple[bytes, bytes]) -> None:
    import dkim

    private, record = dkim_key
    signed = sign_dkim(build(), "yoga.example", "af2026", private)
    tampered = signed.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: List-Unsubscribe=Two-Click")
    assert tampered != signed
    assert not dkim.verify(tampered, dnsfunc=dns_for(record))
    added = signed.replace(b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    assert not dkim.verify(added, dnsfunc=dns_for(record))
    body_changed = signed.replace(b"Hi Zo=C3=AB", b"Hi Zo=C3=AC")
    assert body_changed != signed
    assert not dkim.verify(body_changed, dnsfunc=dns_for(record))


def test_dkim_with_a_bad_key_is_a_clear_error() -> None:
    from autofunnel.errors import AutofunnelError

    with pytest.raises(AutofunnelError, match="DKIM"):
        sign_dkim(build(), "yoga.example", "af2026", b"-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n")
