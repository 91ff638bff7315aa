"""Stand-in images: real PNGs at the requested size that show the prompt they were made from.

    >>> png = render_png("a red fox", "", 1, "1024:1024 (1:1)", True)
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True

Everything drawn derives from the inputs (colours and shapes from their hash), so the
same inputs give byte-identical files and different prompts visibly different ones.
Flat shapes and fast zlib keep one 1440×810 render to a few tens of milliseconds.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from flashgen.models import canonical_json, resolution

Colour = tuple[int, int, int]


@lru_cache(maxsize=32)
def render_png(
    prompt: str, negative_prompt: str, seed: int, aspect_ratio: str, prompt_extend: bool
) -> bytes:
    """The PNG for these inputs (cached: a client may download the same file again)."""
    width, height = resolution(aspect_ratio)
    key = canonical_json([prompt, negative_prompt, seed, aspect_ratio, prompt_extend])
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    hue = rng.random()
    image = Image.new("RGB", (width, height), _colour(hue, 0.55, 0.35))
    draw = ImageDraw.Draw(image)
    _draw_shapes(draw, rng, hue, width, height)
    footer = f"seed {seed} · {aspect_ratio} · magic prompt {'on' if prompt_extend else 'off'}"
    if negative_prompt:
        footer += f" · not: {negative_prompt}"
    _draw_caption(draw, prompt, footer, width, height)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _colour(hue: float, saturation: float, value: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _draw_shapes(
    draw: ImageDraw.ImageDraw, rng: random.Random, hue: float, width: int, height: int
) -> None:
    """A dozen flat blocks and discs in hues near the image's own."""
    unit = min(width, height)
    for _ in range(12):
        x, y = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        w, h = rng.uniform(0.15, 0.5) * unit, rng.uniform(0.15, 0.5) * unit
        colour = _colour(
            hue + rng.uniform(-0.15, 0.15), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9)
        )
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=colour)


def _draw_caption(
    draw: ImageDraw.ImageDraw, prompt: str, footer: str, width: int, height: int
) -> None:
    """The prompt, wrapped, on a dark panel; the other inputs in a smaller line below it."""
    margin = width // 20
    text_font = ImageFont.load_default(size=max(16, width // 32))
    small_font = ImageFont.load_default(size=max(12, width // 60))
    line_height = round(text_font.size * 1.25)
    max_lines = max(1, (height - 4 * margin) // line_height - 1)
    lines = _wrap(prompt, text_font, width - 4 * margin, max_lines)
    panel_height = len(lines) * line_height + 3 * small_font.size + margin
    top = height - margin - panel_height
    draw.rectangle((margin, top, width - margin, height - margin), fill=(16, 16, 20))
    y = top + margin // 2
    for line in lines:
        draw.text((2 * margin, y), line, font=text_font, fill=(245, 245, 240))
        y += line_height
    footer_lines = _wrap(footer, small_font, width - 4 * margin, 1)
    draw.text(
        (2 * margin, y + small_font.size // 2),
        footer_lines[0],
        font=small_font,
        fill=(170, 170, 180),
    )
    draw.text((margin, margin // 2), "flashgen emulator", font=small_font, fill=(235, 235, 235))


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels, cut with an ellipsis after ``max_lines``."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip() + " …"
    # A single word wider than the line is cut rather than allowed to run off the image.
    return [_fit(line, font, width) for line in lines]


def _fit(line: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    if font.getlength(line) <= width:
        return line
    low, high = 0, len(line)  # binary search: the longest prefix that fits with its ellipsis
    while low < high:
        mid = (low + high + 1) // 2
        if font.getlength(line[:mid] + "…") <= width:
            low = mid
        else:
            high = mid - 1
    return line[:low] + "…"
