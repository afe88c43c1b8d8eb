"""LLaVA-NeXT (LLaVA-1.6): LLaVA-1.5 over any-resolution tiles, packed with `image_newline` by a host-built index.

Each image is a base tile (the whole image at the tower's size) plus the tiles of the best-fitting grid of
`image_grid_pinpoints`. transformers reshapes the tiles' features into one grid, crops the padding the
processor added (`unpad_image`) and appends `image_newline` to every row. That only selects values, so here
it is an int32 gather index built on the host with transformers' own float arithmetic, into a table of the
newline and every tile's features. Tiles are padded to the most any pinpoint needs and the index to the text
bucket, so one compile serves every aspect ratio.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.models.causal_lm import CausalLM, Embedded
from sgm_jax.models.clip import ClipVisionSpec
from sgm_jax.models.config import UnsupportedConfigError
from sgm_jax.models.layers import param, scatter_image_features
from sgm_jax.models.llava import LlavaForConditionalGeneration, LlavaModel, LlavaSpec
from sgm_jax.runtime.errors import InputError


@dataclasses.dataclass(frozen=True)
class LlavaNextSpec(LlavaSpec):
    hf_model_type: ClassVar[str] = "llava_next"
    own_fields: ClassVar[tuple[str, ...]] = ("image_grid_pinpoints",)

    # (height, width) of each grid an image may be tiled to, multiples of the tower's image size.
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ()

    @property
    def max_tiles(self) -> int:
        """The most tiles one image can take (the base tile included): the static tile axis."""
        tile = self.vision.image_size
        return 1 + max((h // tile) * (w // tile) for h, w in self.image_grid_pinpoints)

    @classmethod
    def _own_fields(cls, cfg: dict[str, Any], where: str, vision: ClipVisionSpec) -> dict[str, Any]:
        if cfg.get("vision_feature_select_strategy", "default") != "default":
            raise UnsupportedConfigError(
                f"{where}: vision_feature_select_strategy={cfg['vision_feature_select_strategy']!r} is not supported "
                "for LLaVA-NeXT (transformers' tile packing needs the CLS token dropped: 'default')"
            )
        default = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        pinpoints = cfg.get("image_grid_pinpoints") or default
        tile = vision.image_size
        shaped = all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pinpoints)
        if not shaped or any(int(v) <= 0 or int(v) % tile for p in pinpoints for v in p):
            raise UnsupportedConfigError(
                f"{where}: image_grid_pinpoints={pinpoints!r} must be (height, width) pairs that are positive "
                f"multiples of vision_config.image_size={tile}"
            )
        return {"image_grid_pinpoints": tuple((int(h), int(w)) for h, w in pinpoints)}

    def to_hf(self) -> dict[str, Any]:
        return {
            **super().to_hf(),
            "model_type": "llava_next",
            "architectures": ["LlavaNextForConditionalGeneration"],
            "image_grid_pinpoints": [list(p) for p in self.image_grid_pinpoints],
        }


def image_layout(size: tuple[int, int], spec: LlavaNextSpec) -> tuple[int, np.ndarray]:
    """(tiles, token sources) of one image of original `size` (height, width): each of its `<image>` tokens
    as `tile * features_per_tile + position`, or -1 for `image_newline`, in transformers' packing order.

    Cached per size (read-only arrays): checking, row assignment and input preparation all ask for it."""
    return _layout(int(size[0]), int(size[1]), spec)


@functools.lru_cache(maxsize=4096)
def _layout(height: int, width: int, spec: LlavaNextSpec) -> tuple[int, np.ndarray]:
    from transformers.image_processing_utils import select_best_resolution

    tile, per_side = spec.vision.image_size, spec.vision.image_size // spec.vision.patch_size
    per_tile = per_side * per_side
    best_h, best_w = select_best_resolution((height, width), [list(p) for p in spec.image_grid_pinpoints])
    nh, nw = best_h // tile, best_w // tile
    rows, cols = np.meshgrid(np.arange(nh * per_side), np.arange(nw * per_side), indexing="ij")
    grid = (1 + (rows // per_side) * nw + cols // per_side) * per_tile + (rows % per_side) * per_side + cols % per_side
    # transformers' unpad_image, in its own float arithmetic.
    current_h, current_w = nh * per_side, nw * per_side
    if width / height > current_w / current_h:
        new_h = int(round(height * (current_w / width), 7))
        pad = (current_h - new_h) // 2
        grid = grid[pad : current_h - pad]
    else:
        new_w = int(round(width * (current_h / height), 7))
        pad = (current_w - new_w) // 2
        grid = grid[:, pad : current_w - pad]
    with_newlines = np.concatenate([grid, -np.ones((grid.shape[0], 1), grid.dtype)], axis=1)
    layout = np.concatenate([np.arange(per_tile), with_newlines.reshape(-1)]).astype(np.int32)
    layout.setflags(write=False)
    return 1 + nh * nw, layout


def _rows_of_images(input_ids: np.ndarray, counts: list[int], token: int, sizes: np.ndarray) -> np.ndarray:
    """The batch row of each image, walking each row's runs of image tokens in order: a run holds one image or
    several adjacent ones, each exactly as many tokens as its layout. A mismatch names the image and both counts."""
    rows, image = [], 0
    for row, ids in enumerate(np.asarray(input_ids)):
        is_token = np.concatenate([[False], ids == token, [False]])
        edges = np.flatnonzero(np.diff(is_token.astype(np.int8)))
        for start, end in zip(edges[::2], edges[1::2]):
            first, left = image, int(end - start)
            while left > 0 and image < len(counts) and counts[image] <= left:
                left -= counts[image]
                rows.append(row)
                image += 1
            if left:
                wanted = (
                    f"image {first} (size {sizes[first].tolist()}) needs {counts[first]}"
                    if first < len(counts)
                    else f"all {len(counts)} image(s) are placed before it"
                )
                raise InputError(
                    f"Image features and image tokens do not match: row {row} has a run of {int(end - start)} image "
                    f"tokens (id {token}) at position {int(start)}, but {wanted}"
                )
    if image != len(counts):
        raise InputError(
            f"Image features and image tokens do not match: {len(counts)} image(s) given but the prompts hold "
            f"tokens for {image}; images {image}.. need {counts[image:]} tokens"
        )
    return np.asarray(rows, np.int32)


class LlavaNextModel(LlavaModel):
    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"image_newline": ("image_newline", (0,))}

    def __init__(self, spec: LlavaNextSpec, *, dtype, rngs: nnx.Rngs):
        super().__init__(spec, dtype=dtype, rngs=rngs)
        self.image_newline = param(rngs, (spec.text.hidden_size,), dtype, ("embed",))


class LlavaNextForConditionalGeneration(LlavaForConditionalGeneration):
    """`model(input_ids, pixel_values=[images, tiles, 3, H, W], image_sizes=[images, 2], attention_mask=...)`."""

    model_type, spec_class = "llava_next", LlavaNextSpec
    image_inputs = ("pixel_values", "image_sizes")
    load_layout = (("image_newline", "model.image_newline"),) + LlavaForConditionalGeneration.load_layout
    save_layout = (("model.image_newline", "image_newline"),) + LlavaForConditionalGeneration.save_layout
    backbone_class = LlavaNextModel

    @property
    def tokens_per_image(self) -> int:
        """An estimate (it depends on the aspect ratio): all tiles' features."""
        return self.spec.features_per_image * self.spec.max_tiles

    def _layouts(self, images: Mapping[str, Any]) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        sizes = images.get("image_sizes")
        sizes = np.zeros((0, 2), np.int64) if sizes is None else np.asarray(sizes, np.int64).reshape(-1, 2)
        return sizes, [image_layout(size, self.spec) for size in sizes]

    def check_inputs(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> None:
        """Tiles and sizes as the processor returns them, and exactly each image's token count in the prompt."""
        CausalLM.check_inputs(self, input_ids, images)
        pixels = images.get("pixel_values")
        if (pixels is None) != (images.get("image_sizes") is None):
            raise InputError("pixel_values and image_sizes come together (as the processor returns them)")
        sizes, layouts = self._layouts(images)
        if pixels is not None:
            side, shape = self.spec.vision.image_size, tuple(np.shape(pixels))
            if len(shape) != 5 or shape[0] != len(sizes) or shape[2:] != (self.spec.vision.num_channels, side, side):
                raise InputError(
                    f"pixel_values is {list(shape)}; with {len(sizes)} image_sizes LLaVA-NeXT takes "
                    f"[{len(sizes)}, tiles, {self.spec.vision.num_channels}, {side}, {side}]"
                )
            for i, (tiles, _) in enumerate(layouts):
                if tiles > shape[1]:
                    raise InputError(
                        f"image {i} (size {sizes[i].tolist()}) needs {tiles} tiles, pixel_values has {shape[1]}"
                    )
        if (sizes <= 0).any():
            raise InputError(f"image_sizes must be positive (height, width), got {sizes.tolist()}")
        _rows_of_images(input_ids, [len(layout) for _, layout in layouts], self.image_token_id, sizes)

    def image_rows(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> np.ndarray:
        sizes, layouts = self._layouts(images)
        return _rows_of_images(input_ids, [len(layout) for _, layout in layouts], self.image_token_id, sizes)

    def prepare_inputs(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, images: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Tiles padded to `max_tiles` per image and flattened, each tile's image (-1: a pad tile), and the
        gather index of every `<image>` token into [newline, tile features...], padded to the batch's tokens."""
        if images.get("pixel_values") is None:
            return {}
        pixels = np.asarray(images["pixel_values"], np.float32)
        sizes, layouts = self._layouts(images)
        count, tiles, per_tile = len(sizes), self.spec.max_tiles, self.spec.features_per_image
        padded = np.zeros((count, tiles) + pixels.shape[2:], np.float32)
        padded[:, : pixels.shape[1]] = pixels[:, :tiles]
        tile_images = np.full((count, tiles), -1, np.int32)
        index = np.zeros(np.asarray(input_ids).size, np.int32)
        start = 0
        for image, (used, layout) in enumerate(layouts):
            tile_images[image, :used] = image
            index[start : start + len(layout)] = np.where(layout < 0, 0, 1 + image * tiles * per_tile + layout)
            start += len(layout)
        return {
            "pixel_values": padded.reshape((count * tiles,) + pixels.shape[2:]),
            "image_sizes": sizes,
            "image_feature_index": index,
            "tile_images": tile_images.reshape(-1),
        }

    def pad_images(self, inputs: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """Room for `count` images: zero tiles of no image; the gather index never points at them."""
        padded = dict(inputs)
        extra = count - len(inputs["image_sizes"])
        if extra > 0:
            tiles = self.spec.max_tiles
            pixels = inputs["pixel_values"]
            padded["pixel_values"] = np.concatenate(
                [pixels, np.zeros((extra * tiles,) + pixels.shape[1:], pixels.dtype)]
            )
            padded["tile_images"] = np.concatenate([inputs["tile_images"], -np.ones(extra * tiles, np.int32)])
            padded["image_sizes"] = np.concatenate([inputs["image_sizes"], np.zeros((extra, 2), np.int64)])
        return padded

    def embed(
        self, input_ids: jax.Array, pixel_values=None, image_sizes=None, image_feature_index=None, tile_images=None
    ) -> Embedded:
        """Token embeddings with the packed tile features in the `<image>` positions, the tower's hidden states
        (rows are tiles) and the image of each tile (`segments`)."""
        embeds = self.decoder.embed_tokens(input_ids)
        if pixel_values is None:
            return Embedded(embeds)
        features, vision_hidden = self.model.image_features(jnp.asarray(pixel_values))
        table = jnp.concatenate(
            [self.model.image_newline[None].astype(features.dtype), features.reshape(-1, features.shape[-1])]
        )
        packed = jnp.take(table, jnp.asarray(image_feature_index), axis=0)
        embeds = scatter_image_features(embeds, input_ids, packed, self.image_token_id)
        tiles = dict.fromkeys(("model.vision_tower", "model.multi_modal_projector"), jnp.asarray(tile_images))
        return Embedded(embeds, vision_hidden=vision_hidden, segments=tiles)  # rows are tiles: each one's image
