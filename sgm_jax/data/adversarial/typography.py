"""Typographic images: a phrase rendered as black text on white, the way visual jailbreaks hide a request.

Three layouts, after the benchmarks that use them:
  TYPO (MM-SafetyBench)  the phrase alone on a blank canvas;
  SD_TYPO                 an existing image on top, the phrase on white below it;
  FigStep                 the phrase followed by empty numbered steps "1.", "2.", "3.".
The font is Pillow's bundled default scaled to size (no font file needed); wrapping is
greedy by rendered width, so the same text, size and Pillow give the same pixels.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from sgm_jax.data.samples import DatasetError

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
MIN_FONT_SIZE = 6


def default_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` pixels; needs Pillow >= 10.1 built with FreeType."""
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("typographic images need Pillow >= 10.1 built with FreeType, to scale its default font")
    return font


def _split_long_word(word: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    pieces, piece = [], ""
    for char in word:
        if piece and font.getlength(piece + char) > width:
            pieces.append(piece)
            piece = char
        else:
            piece += char
    return pieces + [piece]


def wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Lines of at most `width` pixels: words fill each line in turn, a word wider than a line is cut, newlines kept."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            *full, line = _split_long_word(word, font, width)
            lines.extend(full)
        lines.append(line)
    return lines


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


def _draw(canvas: Image.Image, lines: list[str], font: ImageFont.FreeTypeFont, left: int, top: int) -> None:
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((left, top + k * _line_height(font)), line, font=font, fill=BLACK)


def with_numbered_steps(text: str, steps: int) -> str:
    """FigStep's layout: the phrase, then empty items "1." ... for the model to fill in."""
    return text + "".join(f"\n{k}." for k in range(1, steps + 1))


def _under(base: Image.Image, text: str, font_size: int) -> Image.Image:
    width = base.width
    margin = max(2, width // 32)
    font = default_font(font_size)
    lines = wrap(text, font, width - 2 * margin)
    image = Image.new("RGB", (width, base.height + len(lines) * _line_height(font) + 2 * margin), WHITE)
    image.paste(base.convert("RGB"), (0, 0))
    _draw(image, lines, font, margin, base.height + margin)
    return image


def _on_canvas(size: tuple[int, int], text: str, font_size: int) -> Image.Image:
    width, height = size
    margin = max(2, width // 32)
    for size_now in range(font_size, MIN_FONT_SIZE - 1, -1):
        font = default_font(size_now)
        lines = wrap(text, font, width - 2 * margin)
        if len(lines) * _line_height(font) <= height - 2 * margin:
            image = Image.new("RGB", (width, height), WHITE)
            _draw(image, lines, font, margin, margin)
            return image
    raise DatasetError(
        f"text of {len(text)} characters does not fit a {width}x{height} image even at font size "
        f"{MIN_FONT_SIZE}; use a larger size or shorter text"
    )


def typographic_image(
    text: str,
    *,
    base: Image.Image | None = None,
    size: tuple[int, int] = (336, 336),
    font_size: int | None = None,
    numbered_steps: int = 0,
) -> Image.Image:
    """`text` as black-on-white typography, an RGB image.

    Without `base`: a blank `size` (width, height) canvas, text from the top left, wrapped to
    the width; the font (at most `font_size`, by default a tenth of the width) shrinks until
    the text fits. With `base`: `base` unchanged on top and the wrapped text at `font_size` on
    a white band below it, as wide as `base` (`size` is unused). `numbered_steps` appends
    FigStep's empty "1." ... items.
    """
    if not text.strip():
        raise DatasetError("typographic_image needs non-empty text")
    text = with_numbered_steps(text, numbered_steps)
    width = base.width if base is not None else size[0]
    font_size = font_size or max(MIN_FONT_SIZE, width // 10)
    return _under(base, text, font_size) if base is not None else _on_canvas(size, text, font_size)
