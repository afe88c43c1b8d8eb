"""Opening a dataset's image the way the checkpoint's processor means it to be seen, or saying why it cannot be.

Every image reaches the processor as 8-bit RGB:
- 16-bit and 32-bit integer greyscale (`I;16*`, `I`: how 16-bit PNGs open) are scaled to 8 bits (x / 257),
  not clipped, which would show almost every pixel white;
- 32-bit float greyscale (`F`) is read as PIL converts it (values 0-255, clipped);
- transparency (an alpha band, or a palette's or greyscale's transparent colour) is composited onto white,
  as transformers' `convert_to_rgb` does for the processors that convert to RGB;
- every other mode (palette, CMYK, YCbCr, 1-bit, ...) is converted by PIL.

An image with more than `MAX_IMAGE_PIXELS` pixels is refused as a possible decompression bomb before it is
decoded; an empty, truncated or undecodable file, a folder and a 0-pixel image are refused by name.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from sgm_jax.data.samples import DatasetError

# PIL's own default limit (about 89 megapixels, a 1024 x 1024 x 3 x 4 x 8 bytes budget); far above any
# processor's input, whose images are resized to at most a few megapixels.
MAX_IMAGE_PIXELS = 89_478_485

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(DatasetError):
    """An image file that cannot be shown to the model; the message names the file and what is wrong with it."""


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit integer greyscale image scaled to 8-bit `L` (full scale 65535 -> 255)."""
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB, following the rules in this module's docstring."""
    transparency = image.info.get("transparency")
    if image.mode in _SIXTEEN_BIT:
        image = _eight_bit(image)
        if transparency is not None:  # a 16-bit greyscale's transparent value no longer exists at 8 bits
            transparency = None
    elif image.mode == "F":
        image = image.convert("L")
    if "A" in image.getbands() or "a" in image.getbands() or transparency is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """The image at `path`, decoded and as 8-bit RGB; an `ImageError` naming `path` if it cannot be."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below, by name
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageError(
                        f"{path}: {width} x {height} pixels is above the limit of {MAX_IMAGE_PIXELS:,} "
                        "(a decompression bomb?); resize it first"
                    )
                if width == 0 or height == 0:
                    raise ImageError(f"{path}: an empty image ({width} x {height} pixels)")
                image.load()
                return to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:  # over twice the limit: PIL refuses before we see the size
        raise ImageError(f"{path}: refused as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PIL can read (empty, damaged or another kind of file)") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: a folder, not an image file") from None
    except PermissionError:
        raise ImageError(f"{path}: not readable (permission denied)") from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL's decoders raise these for truncated or damaged data
        raise ImageError(f"{path}: cannot be decoded ({err})") from None
