"""The countdown image an email shows for a lead's deadline (`countdown_url(name)`).

Email clients run no scripts, so the animation is the image: an animated GIF of
`FRAMES` one-second frames counting down from the time left when it was fetched
(`2d 14h 05m 09s`), with no loop extension, so it plays once and then holds its
last frame — what Deadline Funnel's users know. A reader who opens the email
again fetches a new image from the time left then.

It is drawn at twice the size it is shown (`SCALE`), so it stays sharp on
high-density screens; templates show it `width="300"`. Digits sit in cells of
one width, so the numbers do not jitter as they change.

Drawing 60 frames takes tens of milliseconds, so whole images are cached per
second of time left and single frames per text: a blast of opens of the same
offer draws each second once, and two fetches a second apart share 59 frames.
The font is Pillow's own scalable default, so nothing is fetched from the
internet and no font file is shipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from io import BytesIO

from PIL import Image, ImageDraw, ImageFont

FRAMES = 60
"""Seconds the image counts down before it holds."""
SCALE = 2
"""Pixels drawn per pixel shown: sharp at 2× density."""
WIDTH = 300 * SCALE
HEIGHT = 70 * SCALE
BACKGROUND = (255, 255, 255)
INK = (43, 43, 43)
EXPIRED_INK = (150, 40, 40)
EXPIRED_TEXT = "Offer expired"
NOT_STARTED_TEXT = "--d --h --m --s"

_SHADES = 16
"""Anti-aliasing levels per ink: every frame shares one 32-colour palette."""
_NUMBER_SIZE = 36 * SCALE
_UNIT_SIZE = 20 * SCALE
_UNIT_GAP = 2 * SCALE
_SEGMENT_GAP = 9 * SCALE
_BASELINE = round(HEIGHT / 2 + _NUMBER_SIZE * 0.36)
_PAD = 4 * SCALE
"""Room either side of a glyph for strokes past its advance."""


@dataclass(frozen=True)
class Remaining:
    """Time left in whole units: what one frame shows."""

    days: int
    hours: int
    minutes: int
    seconds: int

    @classmethod
    def of(cls, seconds: int) -> Remaining:
        days, rest = divmod(max(seconds, 0), 86400)
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        return cls(days, hours, minutes, seconds)

    def segments(self) -> list[tuple[str, str]]:
        """`[("2", "d"), ("14", "h"), ("05", "m"), ("09", "s")]`; days and hours only when there are any."""
        parts: list[tuple[str, str]] = []
        if self.days:
            parts.append((str(self.days), "d"))
        if self.days or self.hours:
            parts.append((f"{self.hours:02d}" if parts else str(self.hours), "h"))
        parts.append((f"{self.minutes:02d}" if parts else str(self.minutes), "m"))
        parts.append((f"{self.seconds:02d}", "s"))
        return parts


def format_remaining(remaining: timedelta) -> str:
    """`2d 14h 05m 09s`, `5h 12m 44s` or `3m 07s`; whole seconds, rounded down, never negative."""
    return " ".join(number + unit for number, unit in Remaining.of(int(remaining.total_seconds())).segments())


def countdown_text(remaining: timedelta | None) -> str:
    """What the image says first: the time left, the expired text, or dashes for a deadline not started."""
    if remaining is None:
        return NOT_STARTED_TEXT
    if remaining <= timedelta(0):
        return EXPIRED_TEXT
    return format_remaining(remaining)


def draw_countdown(remaining: timedelta | None) -> bytes:
    """The GIF for `remaining` (None: the deadline has not started for this lead)."""
    if remaining is None:
        return _still(NOT_STARTED_TEXT)
    return _countdown_gif(int(remaining.total_seconds()))


@lru_cache(maxsize=512)
def _countdown_gif(seconds: int) -> bytes:
    if seconds <= 0:
        return _still(EXPIRED_TEXT)
    frames = [_frame(left) for left in range(seconds, max(seconds - FRAMES, 0), -1)]
    if len(frames) < FRAMES:
        frames.append(_expired_frame())  # the deadline passes within the minute: end on "expired"
    return _gif(frames)


@lru_cache(maxsize=8)
def _still(text: str) -> bytes:
    return _gif([_expired_frame() if text == EXPIRED_TEXT else _text_frame(text)])


def _gif(frames: list[Image.Image]) -> bytes:
    buffer = BytesIO()
    # No `loop`: without the NETSCAPE2.0 extension a GIF plays once and holds its last frame.
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=1000, optimize=False)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def _palette() -> list[int]:
    """Index i < 16 blends INK into the background, 16 ≤ i < 32 blends EXPIRED_INK: one palette for every frame."""
    palette: list[int] = []
    for ink in (INK, EXPIRED_INK):
        for shade in range(_SHADES):
            palette.extend(round(i + (b - i) * shade / (_SHADES - 1)) for i, b in zip(ink, BACKGROUND))
    return palette


@lru_cache(maxsize=2)
def _shade_table(offset: int) -> list[int]:
    return [offset + value * _SHADES // 256 for value in range(256)]


def _paletted(coverage: Image.Image, offset: int) -> Image.Image:
    """A grey-scale drawing (0 = ink, 255 = paper) as palette indices of one ink."""
    indices = coverage.point(_shade_table(offset))
    frame = Image.frombytes("P", coverage.size, indices.tobytes())
    frame.putpalette(_palette())
    return frame


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=1)
def _digit_width() -> float:
    return max(_font(_NUMBER_SIZE).getlength(digit) for digit in "0123456789")


def _number_width(number: str) -> float:
    return len(number) * _digit_width()


@lru_cache(maxsize=64)
def _glyph(text: str, size: int) -> Image.Image:
    """`text` drawn once as a mask on its baseline, `_BASELINE`: frames paste glyphs instead of drawing text."""
    font = _font(size)
    mask = Image.new("L", (int(font.getlength(text)) + 2 * _PAD, HEIGHT), 0)
    ImageDraw.Draw(mask).text((_PAD, _BASELINE), text, fill=255, font=font, anchor="ls")
    return mask


@lru_cache(maxsize=4 * FRAMES)
def _frame(seconds: int) -> Image.Image:
    segments = Remaining.of(seconds).segments()
    unit_font = _font(_UNIT_SIZE)
    widths = [_number_width(number) + _UNIT_GAP + unit_font.getlength(unit) for number, unit in segments]
    x = (WIDTH - sum(widths) - _SEGMENT_GAP * (len(segments) - 1)) / 2
    coverage = Image.new("L", (WIDTH, HEIGHT), 255)

    def put(text: str, size: int, left: float) -> None:
        coverage.paste(0, (round(left) - _PAD, 0), _glyph(text, size))

    for (number, unit), width in zip(segments, widths):
        for position, digit in enumerate(number):
            put(digit, _NUMBER_SIZE, x + position * _digit_width() + (_digit_width() - _font(_NUMBER_SIZE).getlength(digit)) / 2)
        put(unit, _UNIT_SIZE, x + _number_width(number) + _UNIT_GAP)
        x += width + _SEGMENT_GAP
    return _paletted(coverage, 0)


def _centred(text: str, size: int) -> Image.Image:
    coverage = Image.new("L", (WIDTH, HEIGHT), 255)
    draw = ImageDraw.Draw(coverage)
    draw.text((WIDTH / 2, HEIGHT / 2), text, fill=0, font=_font(size), anchor="mm")
    return coverage


@lru_cache(maxsize=1)
def _expired_frame() -> Image.Image:
    return _paletted(_centred(EXPIRED_TEXT, 26 * SCALE), _SHADES)


@lru_cache(maxsize=2)
def _text_frame(text: str) -> Image.Image:
    return _paletted(_centred(text, 26 * SCALE), 0)
