"""Qwen2-VL and Qwen2.5-VL: a ViT over packed patches with 2-D RoPE, a 2x2 patch merger, and the Qwen2
decoder with multimodal RoPE (M-RoPE); 2.5's tower has RMSNorm, a SwiGLU MLP and window attention.

Everything that depends on image sizes is computed on the host (`prepare_inputs`), so the jitted forward
sees only static shapes: the packed patches are padded to a bucket and carry the image (and 2.5 window)
of each patch as segment ids, which mask attention exactly for any mix of sizes. When every image of a
batch has the same grid (one canonical resolution), the segments are whole blocks and attention runs
batched per image (and per window) with no cross-image work at all. M-RoPE positions and each row's
`rope_delta` are built on the host from `image_grid_thw`, as transformers' `get_rope_index` builds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.models.attention import attend
from sgm_jax.models.causal_lm import CausalLM, Embedded, images_only
from sgm_jax.models.config import UnsupportedConfigError, check_fields, require
from sgm_jax.models.layers import (
    ACTIVATIONS,
    Activation,
    LayerNorm,
    Linear,
    RMSNorm,
    param,
    scatter_image_features,
)
from sgm_jax.models.llama import LlamaMLP, LlamaModel
from sgm_jax.models.qwen2 import Qwen2Spec, qwen2_text_config, qwen2_text_spec
from sgm_jax.models.site import OUT, Fold, ImageDomain, Site, scale_axis
from sgm_jax.runtime.buckets import bucket_length
from sgm_jax.runtime.errors import InputError

_VISION_EPS = 1e-6  # transformers hard-codes the vision norms' eps


@dataclasses.dataclass(frozen=True)
class QwenVisionSpec:
    windowed: bool  # Qwen2.5-VL: RMSNorm, SwiGLU MLP, window attention outside `fullatt_block_indexes`
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    hidden_act: str
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    rope_theta: float
    window_size: int = 0
    fullatt_block_indexes: tuple[int, ...] = ()

    @property
    def patch_width(self) -> int:
        """Values per packed patch row: channels x frames x pixels."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        """Patches merged into one LM token."""
        return self.spatial_merge_size**2

    @property
    def window(self) -> int:
        """A window's side in merged units (2.5)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, where: str, windowed: bool, text_hidden: int) -> QwenVisionSpec:
        require(where, "model_type", cfg.get("model_type"), ["qwen2_5_vl_vision" if windowed else "qwen2_vl_vision"])
        rope = cfg.get("rope_parameters") or {"rope_type": "axial", "rope_theta": 10000.0}
        require(where, "rope_parameters.rope_type", rope.get("rope_type"), ["axial"])
        require(where, "hidden_act", cfg["hidden_act"], ACTIVATIONS)
        common = ["depth", "hidden_act", "num_heads", "in_channels", "patch_size", "temporal_patch_size"]
        common += ["spatial_merge_size", "rope_parameters", "hidden_size"]
        if windowed:
            used = common + ["intermediate_size", "out_hidden_size", "window_size", "fullatt_block_indexes"]
            check_fields(cfg, where=where, used=used, inert=["tokens_per_second"])
            width, intermediate, out = cfg["hidden_size"], cfg["intermediate_size"], cfg["out_hidden_size"]
        else:
            check_fields(cfg, where=where, used=common + ["embed_dim", "mlp_ratio"])
            width, out = cfg["embed_dim"], cfg["hidden_size"]
            intermediate = int(width * cfg["mlp_ratio"])
        if width % cfg["num_heads"] or (width // cfg["num_heads"]) % 4:
            raise UnsupportedConfigError(f"{where}: the head width {width}/{cfg['num_heads']} must divide by 4")
        if out != text_hidden:
            raise UnsupportedConfigError(
                f"{where}: the merger's output width {out} differs from the LM's {text_hidden}"
            )
        spec = cls(
            windowed=windowed,
            depth=cfg["depth"],
            hidden_size=width,
            intermediate_size=intermediate,
            num_heads=cfg["num_heads"],
            hidden_act=cfg["hidden_act"],
            in_channels=cfg["in_channels"],
            patch_size=cfg["patch_size"],
            temporal_patch_size=cfg["temporal_patch_size"],
            spatial_merge_size=cfg["spatial_merge_size"],
            out_hidden_size=out,
            rope_theta=float(rope["rope_theta"]),
            window_size=cfg.get("window_size", 0) if windowed else 0,
            fullatt_block_indexes=tuple(cfg.get("fullatt_block_indexes", ())) if windowed else (),
        )
        if windowed and spec.window < 1:
            raise UnsupportedConfigError(f"{where}: window_size={spec.window_size} is smaller than one merged unit")
        return spec

    def to_hf(self) -> dict[str, Any]:
        common = {
            "depth": self.depth,
            "hidden_act": self.hidden_act,
            "num_heads": self.num_heads,
            "in_channels": self.in_channels,
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "spatial_merge_size": self.spatial_merge_size,
            "rope_parameters": {"rope_type": "axial", "rope_theta": self.rope_theta},
        }
        if self.windowed:
            return {
                "model_type": "qwen2_5_vl_vision",
                **common,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "out_hidden_size": self.out_hidden_size,
                "window_size": self.window_size,
                "fullatt_block_indexes": list(self.fullatt_block_indexes),
            }
        return {
            "model_type": "qwen2_vl_vision",
            **common,
            "embed_dim": self.hidden_size,
            "hidden_size": self.out_hidden_size,
            "mlp_ratio": ratio if (ratio := self.intermediate_size / self.hidden_size) % 1 else int(ratio),
        }


@dataclasses.dataclass(frozen=True)
class QwenVLSpec:
    model_type: str
    text: Qwen2Spec
    vision: QwenVisionSpec
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, where: str = "config") -> QwenVLSpec:
        model_type = require(where, "model_type", cfg.get("model_type"), ["qwen2_vl", "qwen2_5_vl"])
        check_fields(
            cfg,
            where=where,
            used=["text_config", "vision_config", "tie_word_embeddings", "image_token_id", "video_token_id"]
            + ["vision_start_token_id", "vision_end_token_id"],
        )
        tie = bool(cfg.get("tie_word_embeddings", False))
        text = qwen2_text_spec(cfg["text_config"], where=f"{where}.text_config", tie_word_embeddings=tie)
        vision = QwenVisionSpec.from_hf(
            cfg["vision_config"],
            where=f"{where}.vision_config",
            windowed=model_type == "qwen2_5_vl",
            text_hidden=text.hidden_size,
        )
        return cls(
            model_type=model_type,
            text=text,
            vision=vision,
            image_token_id=int(cfg["image_token_id"]),
            video_token_id=int(cfg["video_token_id"]),
            vision_start_token_id=int(cfg["vision_start_token_id"]),
            vision_end_token_id=int(cfg["vision_end_token_id"]),
        )

    def to_hf(self) -> dict[str, Any]:
        architecture = (
            "Qwen2_5_VLForConditionalGeneration" if self.vision.windowed else "Qwen2VLForConditionalGeneration"
        )
        return {
            "model_type": self.model_type,
            "architectures": [architecture],
            "text_config": qwen2_text_config(self.text, f"{self.model_type}_text"),
            "vision_config": self.vision.to_hf(),
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.text.tie_word_embeddings,
        }


class PatchProjection(Site):
    """HF's `Conv3d` patch embedding with stride = kernel: one matmul over each flattened patch row."""

    hf_params = {"kernel": ("weight", (1, 2, 3, 4, 0))}

    def __init__(self, spec: QwenVisionSpec, *, dtype, rngs: nnx.Rngs):
        shape = (spec.in_channels, spec.temporal_patch_size, spec.patch_size, spec.patch_size, spec.hidden_size)
        self.kernel = param(rngs, shape, dtype, (None, None, None, None, "embed"))

    def site_widths(self) -> tuple[None, int]:
        return None, self.kernel.shape[-1]

    def folder(self, end: str) -> Fold | None:
        return (lambda alpha: scale_axis(self.kernel, alpha, 4)) if end == OUT else None

    def forward(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        return x.astype(kernel.dtype) @ kernel.reshape(-1, kernel.shape[-1])


class PatchEmbed(nnx.Module):
    def __init__(self, spec: QwenVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.proj = PatchProjection(spec, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


def vision_rope(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """The axial 2-D RoPE tables `[patches, head_dim]` (float32) from `(h, w)` patch positions."""
    spatial = head_dim // 2
    inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, spatial, 2, dtype=np.int64).astype(np.float32) / spatial))
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    freqs = jnp.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """RoPE in float32, cast back (transformers' `apply_rotary_pos_emb_vision`)."""
    h = x.astype(jnp.float32)
    half = h.shape[-1] // 2
    rotated = jnp.concatenate([-h[..., half:], h[..., :half]], axis=-1)
    return (h * cos[:, None] + rotated * sin[:, None]).astype(x.dtype)


class VisionAttention(Site):
    """Attention within segments of packed patches: `segments` `[blocks, block]` holds each row's image (or
    window) id, -1 for padding; attention runs per block, masked to equal ids."""

    output_linear, input_linears = "proj", ("qkv",)

    def __init__(self, spec: QwenVisionSpec, *, dtype, rngs: nnx.Rngs):
        d = spec.hidden_size
        self.num_heads, self.head_dim = spec.num_heads, d // spec.num_heads
        self.qkv = Linear(d, 3 * d, use_bias=True, axes=("embed", "heads"), dtype=dtype, rngs=rngs)
        self.proj = Linear(d, d, use_bias=True, axes=("heads", "embed"), dtype=dtype, rngs=rngs)

    def forward(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: jax.Array) -> jax.Array:
        n, heads, hd = x.shape[0], self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(n, 3, heads, hd)
        q, k, v = _rotate(qkv[:, 0], cos, sin), _rotate(qkv[:, 1], cos, sin), qkv[:, 2]
        blocks, size = segments.shape
        q, k, v = (t.reshape(blocks, size, heads, hd) for t in (q, k, v))
        same = (segments[:, :, None] == segments[:, None, :])[:, None]
        return self.proj(attend(q, k, v, mask=same, scale=hd**-0.5).reshape(n, heads * hd))


class VisionMlp(Site):
    """Qwen2-VL's vision MLP: `fc2(act(fc1(x)))`."""

    output_linear, input_linears, activation_feeds = "fc2", ("fc1",), "fc2"

    def __init__(self, spec: QwenVisionSpec, *, dtype, rngs: nnx.Rngs):
        d, f = spec.hidden_size, spec.intermediate_size
        self.fc1 = Linear(d, f, use_bias=True, axes=("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.act = Activation(spec.hidden_act, f)
        self.fc2 = Linear(f, d, use_bias=True, axes=("mlp", "embed"), dtype=dtype, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


def _vision_norm(spec: QwenVisionSpec, width: int, *, dtype, rngs: nnx.Rngs) -> LayerNorm | RMSNorm:
    norm = RMSNorm if spec.windowed else LayerNorm
    return norm(width, eps=_VISION_EPS, dtype=dtype, rngs=rngs)


class VisionBlock(Site):
    def __init__(self, spec: QwenVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.norm1 = _vision_norm(spec, spec.hidden_size, dtype=dtype, rngs=rngs)
        self.norm2 = _vision_norm(spec, spec.hidden_size, dtype=dtype, rngs=rngs)
        self.attn = VisionAttention(spec, dtype=dtype, rngs=rngs)
        d, f, act = spec.hidden_size, spec.intermediate_size, spec.hidden_act
        self.mlp = (
            LlamaMLP(d, f, act=act, bias=True, dtype=dtype, rngs=rngs)
            if spec.windowed
            else VisionMlp(spec, dtype=dtype, rngs=rngs)
        )

    def site_widths(self) -> tuple[int, int]:
        return self.norm1.site_widths()

    def forward(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(Site):
    """Norm each patch, concatenate each 2x2 block of patches, and project to the LM's width."""

    output_linear, activation_feeds = "mlp.2", "mlp.2"

    def __init__(self, spec: QwenVisionSpec, *, dtype, rngs: nnx.Rngs):
        width = spec.hidden_size * spec.merge_unit
        self.ln_q = _vision_norm(spec, spec.hidden_size, dtype=dtype, rngs=rngs)
        self.mlp = nnx.List(
            [
                Linear(width, width, use_bias=True, axes=(None, "mlp"), dtype=dtype, rngs=rngs),
                Activation("gelu", width),
                Linear(width, spec.out_hidden_size, use_bias=True, axes=("mlp", "embed"), dtype=dtype, rngs=rngs),
            ]
        )

    def site_widths(self) -> tuple[int, int]:
        return self.ln_q.site_widths()[0], self.mlp[2].kernel.shape[1]

    def forward(self, x: jax.Array) -> jax.Array:
        h = self.ln_q(x).reshape(-1, self.mlp[0].kernel.shape[0])
        return self.mlp[2](self.mlp[1](self.mlp[0](h)))


def _permute_units(x: jax.Array, index: jax.Array, unit: int) -> jax.Array:
    """Reorder packed patch rows by merged unit (groups of `unit` rows), as 2.5 orders them into windows."""
    return x.reshape(-1, unit, x.shape[-1])[index].reshape(x.shape)


class QwenVisionTransformer(ImageDomain, nnx.Module):
    def __init__(self, spec: QwenVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.spec = spec
        self.patch_embed = PatchEmbed(spec, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([VisionBlock(spec, dtype=dtype, rngs=rngs) for _ in range(spec.depth)])
        self.merger = PatchMerger(spec, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        pixel_values: jax.Array,
        vision_positions: jax.Array,
        image_segments: jax.Array,
        window_index: jax.Array | None = None,
        window_inverse: jax.Array | None = None,
        window_segments: jax.Array | None = None,
    ) -> tuple[jax.Array, list[jax.Array]]:
        """Merged image features `[patches / merge_unit, out_hidden]` in prompt order, and each block's output
        (2.5: in window order, as transformers' hidden states are)."""
        spec = self.spec
        x = self.patch_embed(pixel_values)
        cos, sin = vision_rope(vision_positions, spec.hidden_size // spec.num_heads, spec.rope_theta)
        if spec.windowed:
            x, cos, sin = (_permute_units(t, window_index, spec.merge_unit) for t in (x, cos, sin))
        hidden = []
        for i, block in enumerate(self.blocks):
            full = not spec.windowed or i in spec.fullatt_block_indexes
            x = block(x, cos, sin, image_segments if full else window_segments)
            hidden.append(x)
        merged = self.merger(x)
        return (merged[window_inverse] if spec.windowed else merged), hidden


class QwenVLModel(nnx.Module):
    def __init__(self, spec: QwenVLSpec, *, dtype, rngs: nnx.Rngs):
        self.spec = spec
        self.visual = QwenVisionTransformer(spec.vision, dtype=dtype, rngs=rngs)
        self.language_model = LlamaModel(spec.text, dtype=dtype, rngs=rngs)


_VIDEO_INPUTS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


class Qwen2VLForConditionalGeneration(CausalLM):
    """`model(input_ids, pixel_values=..., image_grid_thw=..., attention_mask=...)`, as the processor gives them.

    Still images only: video inputs are refused by name.
    """

    model_type, spec_class, decoder_layers = "qwen2_vl", QwenVLSpec, "model.language_model.layers"
    backbone_class = QwenVLModel
    image_inputs = ("pixel_values", "image_grid_thw", "mm_token_type_ids")
    processor_name = "Qwen2VLProcessor"
    # The hub and `save_pretrained` layout (`model.` = the LM, `visual.`), then the `state_dict()` one.
    load_layout = (
        ("model.language_model.", "model.language_model."),
        ("model.visual.", "model.visual."),
        ("visual.", "model.visual."),
        ("model.", "model.language_model."),
    )
    save_layout = (("model.language_model.", "model."), ("model.visual.", "visual."))

    @classmethod
    def processor_class(cls) -> type:
        """transformers' processor without its video slot: the stock one requires a video processor, which
        needs torchvision (and sgm_jax takes no video)."""
        import transformers

        return images_only(getattr(transformers, cls.processor_name))

    # -- host side: checks and static-shape inputs ------------------------------------------------------

    def _grids(self, images: Mapping[str, Any]) -> np.ndarray:
        grid = images.get("image_grid_thw")
        return np.zeros((0, 3), np.int64) if grid is None else np.asarray(grid, np.int64).reshape(-1, 3)

    def check_inputs(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> None:
        """Image inputs that fit the prompt: one run of image tokens per `image_grid_thw` row, each as long
        as the image's merged grid; still images only."""
        video = sorted(set(images) & set(_VIDEO_INPUTS))
        if video or (np.asarray(input_ids) == self.spec.video_token_id).any():
            found = video or "video tokens"
            raise InputError(f"video inputs are not supported by sgm_jax's {type(self).__name__} (got {found})")
        super().check_inputs(input_ids, images)
        ids, spec = np.asarray(input_ids), self.spec.vision
        pixels, grids = images.get("pixel_values"), self._grids(images)
        if (pixels is None) != (images.get("image_grid_thw") is None):
            raise InputError("pixel_values and image_grid_thw come together (as the processor returns them)")
        for i, (t, h, w) in enumerate(grids):
            if t != 1 or h % spec.spatial_merge_size or w % spec.spatial_merge_size:
                raise InputError(
                    f"image_grid_thw row {i} is {[int(t), int(h), int(w)]}: images need t=1 and h, w divisible by "
                    f"spatial_merge_size={spec.spatial_merge_size}"
                )
        if pixels is not None:
            expected = (int(grids.prod(1).sum()), spec.patch_width)
            if tuple(np.shape(pixels)) != expected:
                raise InputError(f"pixel_values is {list(np.shape(pixels))}, image_grid_thw implies {list(expected)}")
        found = [n for row in ids for _, n in _runs(row, self.image_token_id)]
        wanted = [int(n) for n in grids.prod(1) // spec.merge_unit]
        if found != wanted:
            raise InputError(
                f"Image features and image tokens do not match: input_ids hold runs of {found} image tokens "
                f"(id {self.image_token_id}) but image_grid_thw gives images of {wanted} tokens"
            )
        types = images.get("mm_token_type_ids")
        if types is not None and not np.array_equal(np.asarray(types), (ids == self.image_token_id).astype(int)):
            raise InputError("mm_token_type_ids does not mark exactly the image tokens of input_ids")

    def image_rows(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> np.ndarray:
        per_row = [len(_runs(row, self.image_token_id)) for row in np.asarray(input_ids)]
        return np.repeat(np.arange(len(per_row)), per_row).astype(np.int32)

    def pad_images(self, inputs: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """Packed patches are already padded to a bucket; the image count enters no shape."""
        return dict(inputs)

    def prepare_inputs(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, images: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        grids = self._grids(images)
        position_ids, rope_deltas = mrope_positions(
            np.asarray(input_ids), np.asarray(attention_mask), grids, self.image_token_id, self.spec.vision
        )
        out = {"position_ids": position_ids, "rope_deltas": rope_deltas}
        if images.get("pixel_values") is not None:
            out.update(packed_vision_inputs(np.asarray(images["pixel_values"]), grids, self.spec.vision))
        return out

    # -- traceable ------------------------------------------------------------------------------------

    @property
    def decoder(self) -> LlamaModel:
        return self.model.language_model

    def embed(self, input_ids, *, position_ids=None, rope_deltas=None, **vision) -> Embedded:
        """Token embeddings with the merged patch features in the image positions, the M-RoPE positions and
        deltas `prepare_inputs` computed (a decode step has none: it continues at `n_real + rope_delta`, as
        transformers' `generate`), the vision blocks' outputs, and the image of each packed patch row and merged
        row (`segments`)."""
        embeds = self.decoder.embed_tokens(input_ids)
        positions = {"positions": position_ids, "rope_deltas": rope_deltas}
        if vision.get("pixel_values") is None:
            return Embedded(embeds, **positions)
        features, hidden = self.model.visual(**vision)
        segments = vision["image_segments"].reshape(-1)
        embeds = scatter_image_features(embeds, input_ids, features, self.image_token_id)
        merged = segments[:: self.spec.vision.merge_unit]  # the merger's output rows and its MLP's
        patches = ("model.visual", "model.visual.merger:in", "model.visual.merger.ln_q")
        by_site = {**dict.fromkeys(patches, segments), "model.visual.merger": merged}
        return Embedded(embeds, **positions, vision_hidden=hidden, segments=by_site)


class Qwen2_5_VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen2.5-VL: Qwen2-VL's interface, with the windowed vision tower."""

    model_type, processor_name = "qwen2_5_vl", "Qwen2_5_VLProcessor"


def _runs(row: np.ndarray, token: int) -> list[tuple[int, int]]:
    """(start, length) of each run of `token` in a row of ids."""
    is_token = np.concatenate([[False], row == token, [False]])
    edges = np.flatnonzero(np.diff(is_token.astype(np.int8)))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])]


def mrope_positions(
    input_ids: np.ndarray, attention_mask: np.ndarray, grids: np.ndarray, image_token: int, spec: QwenVisionSpec
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE positions `[3, batch, seq]` over each row's real tokens (padding 0) and each row's rope delta.

    Text advances all three axes by one per token; an image's merged grid `(lh, lw)` takes t = its start and
    h, w = start + its row, column; the text after it resumes at start + max(lh, lw) (transformers'
    `get_rope_index`). Decoding continues at `n_real + delta`.
    """
    batch, length = input_ids.shape
    positions = np.zeros((3, batch, length), np.int32)
    deltas = np.zeros(batch, np.int32)
    grid = iter(grids)
    for b in range(batch):
        real = np.flatnonzero(attention_mask[b])
        ids = input_ids[b, real]
        row = np.repeat(np.arange(len(real), dtype=np.int64)[None], 3, axis=0)
        shift = 0
        for start, n in _runs(ids, image_token):
            _, h, w = next(grid)
            lh, lw = h // spec.spatial_merge_size, w // spec.spatial_merge_size
            u = np.arange(n)
            row[:, start : start + n] = start + shift
            row[1, start : start + n] += u // lw
            row[2, start : start + n] += u % lw
            row[:, start + n :] += max(lh, lw) - n
            shift += max(lh, lw) - n
        positions[:, b, real] = row
        deltas[b] = shift
    return positions, deltas


def packed_vision_inputs(pixel_values: np.ndarray, grids: np.ndarray, spec: QwenVisionSpec) -> dict[str, np.ndarray]:
    """The vision tower's static-shape inputs: patches padded to a bucket, their `(h, w)` positions, the
    image of each patch as `[blocks, block]` segments (-1 padding), and for 2.5 the window order.

    One grid for every image: the bucket counts images, a block is one image (and a window block one
    window when windows tile the grid), so attention runs batched with nothing masked across images.
    Mixed grids: one block over the whole bucket, masked by segment; exact either way.
    """
    sizes = [int(n) for n in grids.prod(1)]
    total, unit = sum(sizes), spec.merge_unit
    uniform = len({tuple(g) for g in grids.tolist()}) == 1
    if uniform:
        padded = sizes[0] * bucket_length(len(sizes), minimum=1)
        block = sizes[0]
    else:
        padded = -(-bucket_length(total, minimum=64) // unit) * unit
        block = padded
    m = spec.spatial_merge_size
    positions, segments = [], []
    for i, (_, h, w) in enumerate(grids):
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block_major = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)  # noqa: B023
        positions.append(np.stack([block_major(hh), block_major(ww)], -1))
        segments.append(np.full(h * w, i))
    pad = padded - total
    out = {
        "pixel_values": np.concatenate([pixel_values, np.zeros((pad, pixel_values.shape[1]), pixel_values.dtype)]),
        "vision_positions": np.concatenate(positions + [np.zeros((pad, 2), np.int64)]).astype(np.int32),
        "image_segments": np.concatenate(segments + [np.full(pad, -1)]).astype(np.int32).reshape(-1, block),
    }
    if spec.windowed:
        order, window_ids, tiles = _window_order(grids, spec)
        units = padded // unit
        order = np.concatenate([order, np.arange(len(order), units)])
        window_block = spec.window**2 * unit if uniform and tiles else block
        patch_windows = np.concatenate([np.repeat(window_ids, unit), np.full(pad, -1)])
        out["window_index"] = order.astype(np.int32)
        out["window_inverse"] = np.argsort(order).astype(np.int32)
        out["window_segments"] = patch_windows.astype(np.int32).reshape(-1, window_block)
    return out


def _window_order(grids: np.ndarray, spec: QwenVisionSpec) -> tuple[np.ndarray, np.ndarray, bool]:
    """Qwen2.5-VL's window order of merged units (transformers' `get_vision_window_index`), the window id
    of each unit in that order, and whether every image's windows are full (the grid tiles exactly).

    Each image's merged grid is padded up to whole windows (a whole empty window row or column when the
    side is already a multiple), cut into windows row-major, empty windows dropped.
    """
    win, m = spec.window, spec.spatial_merge_size
    order, window_ids, offset, window, tiles = [], [], 0, 0, True
    for _, h, w in grids:
        lh, lw = h // m, w // m
        tiles &= lh % win == 0 and lw % win == 0
        ph, pw = win - lh % win, win - lw % win
        index = np.full((lh + ph, lw + pw), -1)
        index[:lh, :lw] = np.arange(lh * lw).reshape(lh, lw)
        cells = index.reshape((lh + ph) // win, win, (lw + pw) // win, win).transpose(0, 2, 1, 3).reshape(-1, win * win)
        for cell in cells:
            members = cell[cell >= 0]
            if len(members):
                order.append(members + offset)
                window_ids.append(np.full(len(members), window))
                window += 1
        offset += lh * lw
    return np.concatenate(order), np.concatenate(window_ids), tiles
