"""The countdown image an email shows for a lead's deadline (`countdown_url(name)`).

Email clients run no scripts, so "time left" is drawn on the server each time
the image is fetched: one plain, single-frame GIF of about 300×70 pixels, in
Pillow's built-in font (a scalable one where the installed Pillow has
FreeType, else its bitmap font), so nothing is fetched from the internet and
no font file is shipped.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from io import BytesIO

from PIL import Image, ImageDraw, ImageFont

WIDTH = 300
HEIGHT = 70
BACKGROUND = (255, 255, 255)
INK = (43, 43, 43)
EXPIRED_INK = (150, 40, 40)
EXPIRED_TEXT = "offer expired"
NOT_STARTED_TEXT = "--:--:--"

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont | ImageFont.TransposedFont


def format_remaining(remaining: timedelta) -> str:
    """`1d 23:59:12` with a day or more left, else `05:12:44`; whole seconds, rounded down."""
    seconds = max(int(remaining.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock


def countdown_text(remaining: timedelta | None) -> str:
    """What the image says: the time left, `offer expired`, or dashes for a deadline not started."""
    if remaining is None:
        return NOT_STARTED_TEXT
    if remaining <= timedelta(0):
        return EXPIRED_TEXT
    return format_remaining(remaining)


@cache
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: only the bitmap default, no size
        return ImageFont.load_default()


def draw_countdown(remaining: timedelta | None) -> bytes:
    """The GIF for `remaining` (None: the deadline has not started for this lead)."""
    text = countdown_text(remaining)
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(34 if text != EXPIRED_TEXT else 30)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (WIDTH - (right - left)) / 2 - left
    y = (HEIGHT - (bottom - top)) / 2 - top
    draw.text((x, y), text, fill=EXPIRED_INK if text == EXPIRED_TEXT else INK, font=font)
    buffer = BytesIO()
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buffer, format="GIF")
    return buffer.getvalue()
