"""Images reach the processor as the checkpoint means them to be seen: every PIL mode as 8-bit RGB, 16-bit
scaled rather than clipped, transparency composited on white exactly as transformers' `convert_to_rgb`."""

import numpy as np
import pytest
from PIL import Image
from transformers.image_transforms import convert_to_rgb

from sgm_jax.data.images import ImageError, load_rgb


def _saved(tmp_path, image, name="x.png", **options):
    path = tmp_path / name
    image.save(path, **options)
    return str(path)


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 50000]], np.uint16)
    path = _saved(tmp_path, Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values / 257.0).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert np.asarray(Image.open(path).convert("RGB"))[1, 1, 0] == 255  # what a plain convert shows: white


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P-transparent", "L-transparent"])
def test_transparency_is_composited_on_white_as_transformers_does(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "RGBA":
        pixels = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
        pixels[0, 0, -1] = 0
        image = Image.fromarray(pixels, "RGBA")
        path = _saved(tmp_path, image)
    elif mode == "LA":
        pixels = rng.integers(0, 256, (5, 6, 2), dtype=np.uint8)
        pixels[0, 0, -1] = 0
        image = Image.fromarray(pixels, "LA")
        path = _saved(tmp_path, image)
    elif mode == "P-transparent":
        image = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).quantize(8)
        path = _saved(tmp_path, image, transparency=2)
    else:
        image = Image.fromarray(rng.integers(0, 4, (5, 6), dtype=np.uint8) * 60, "L")
        path = _saved(tmp_path, image, transparency=60)
    with Image.open(path) as opened:
        opened.load()
        expected = np.asarray(convert_to_rgb(opened, return_numpy=True))
    got = np.asarray(load_rgb(path))
    np.testing.assert_array_equal(got, expected)
    assert (got == 255).all(axis=-1).any(), "a transparent pixel shows the white background"


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr", "RGB"])
def test_every_other_mode_is_converted_by_pil(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8))
    image = base.convert(mode)
    path = _saved(tmp_path, image, name="x.tiff" if mode in ("CMYK", "YCbCr") else "x.png")
    with Image.open(path) as opened:
        expected = np.asarray(opened.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), expected)


def test_a_float_image_is_read_as_pil_converts_it(tmp_path):
    values = np.array([[0.0, 12.4, 300.0]], np.float32)
    path = _saved(tmp_path, Image.fromarray(values, "F"), name="x.tiff")
    np.testing.assert_array_equal(np.asarray(load_rgb(path))[..., 0], [[0, 12, 255]])


def test_an_empty_image_and_a_folder_are_refused_by_name(tmp_path):
    with pytest.raises(ImageError, match=f"{tmp_path}: a folder, not an image file"):
        load_rgb(str(tmp_path))
    path = tmp_path / "e.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="not an image file PIL can read"):
        load_rgb(str(path))
