"""InternVL (2.5-MPO / 3, the `-hf` checkpoints): InternViT -> pixel shuffle -> LayerNorm + MLP projector -> a
Qwen2 or Llama decoder (by `text_config.model_type`), image features scattered into `<IMG_CONTEXT>` tokens.

Images are tiles of the tower's size (one per image by default, as SGM uses; the processor's tiling with its
thumbnail works too). The tiles of a batch are padded to a power-of-two bucket, each tile's image is found
from the runs of image tokens (the processor wraps each image in `<img>`...`</img>`), and pad tiles are
never scattered or pooled.
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

from sgm_jax.models.attention import attend
from sgm_jax.models.causal_lm import CausalLM, Embedded
from sgm_jax.models.clip import CLIPMLP
from sgm_jax.models.config import UnsupportedConfigError, check_fields, require
from sgm_jax.models.layers import ACTIVATIONS, Activation, LayerNorm, Linear, RMSNorm, param, scatter_image_features
from sgm_jax.models.llama import LlamaSpec
from sgm_jax.models.llava import LlavaForConditionalGeneration, LlavaModel
from sgm_jax.models.qwen2 import qwen2_text_config, qwen2_text_spec
from sgm_jax.models.site import OUT, Fold, ImageDomain, Site, scale_axis
from sgm_jax.runtime.errors import InputError

# The projector's LayerNorm is torch's default (InternViT's own norms use `layer_norm_eps`).
_PROJECTOR_EPS = 1e-5
# InternViT's q/k norms are RMSNorms with this fixed eps.
_QK_NORM_EPS = 1e-6


def _square(where: str, field: str, value: Any) -> int:
    sides = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(sides) != 2 or sides[0] != sides[1]:
        raise UnsupportedConfigError(f"{where}: {field}={value!r} is not supported (square sizes only)")
    return int(sides[0])


@dataclasses.dataclass(frozen=True)
class InternVisionSpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    attention_bias: bool
    use_qk_norm: bool
    hidden_act: str
    norm_type: str
    layer_norm_eps: float
    image_size: int
    patch_size: int
    num_channels: int
    use_mean_pooling: bool
    use_absolute_position_embeddings: bool
    use_mask_token: bool

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, where: str) -> InternVisionSpec:
        require(where, "model_type", cfg.get("model_type"), ["internvl_vision"])
        fields = [f.name for f in dataclasses.fields(cls)]
        check_fields(
            cfg,
            where=where,
            used=fields,
            inert=["hidden_dropout_prob", "projection_dropout", "layer_scale_init_value"],
        )
        require(where, "hidden_act", cfg.get("hidden_act", "gelu"), ACTIVATIONS)
        require(where, "norm_type", cfg.get("norm_type", "layer_norm"), ["layer_norm", "rms_norm"])
        defaults = {
            "attention_bias": False,
            "use_qk_norm": False,
            "hidden_act": "gelu",
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "num_channels": 3,
            "use_mean_pooling": True,
            "use_absolute_position_embeddings": True,
            "use_mask_token": False,
        }
        values = {name: cfg.get(name, defaults.get(name)) for name in fields}
        values["image_size"] = _square(where, "image_size", cfg.get("image_size", 448))
        values["patch_size"] = _square(where, "patch_size", cfg.get("patch_size", 14))
        if values["image_size"] % values["patch_size"]:
            raise UnsupportedConfigError(f"{where}: image_size must be a multiple of patch_size")
        return cls(**values)

    def to_hf(self) -> dict[str, Any]:
        out = {"model_type": "internvl_vision", **dataclasses.asdict(self)}
        out["image_size"], out["patch_size"] = [self.image_size] * 2, [self.patch_size] * 2
        return out


@dataclasses.dataclass(frozen=True)
class InternVLSpec:
    text: LlamaSpec
    vision: InternVisionSpec
    image_token_id: int
    downsample_ratio: float
    projector_hidden_act: str
    vision_feature_layer: int

    @property
    def shuffle(self) -> int:
        """Pixel shuffle's block side: `1 / downsample_ratio` patches per side merge into one feature."""
        return round(1 / self.downsample_ratio)

    @property
    def features_per_image(self) -> int:
        """Image tokens per tile."""
        return (self.vision.patches_per_side // self.shuffle) ** 2

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, where: str = "config") -> InternVLSpec:
        require(where, "model_type", cfg.get("model_type"), ["internvl"])
        check_fields(
            cfg,
            where=where,
            used=[
                "text_config",
                "vision_config",
                "image_token_id",
                "downsample_ratio",
                "projector_hidden_act",
                "vision_feature_layer",
                "vision_feature_select_strategy",
                "tie_word_embeddings",
            ],
            inert=["image_seq_length"],
        )
        vision = InternVisionSpec.from_hf(cfg["vision_config"], where=f"{where}.vision_config")
        text_cfg, text_where = cfg["text_config"], f"{where}.text_config"
        tie = bool(cfg.get("tie_word_embeddings", True))  # InternVLConfig's default: a missing field means tied
        kind = require(text_where, "model_type", text_cfg.get("model_type"), ["qwen2", "llama"])
        if kind == "qwen2":
            text = qwen2_text_spec(text_cfg, where=text_where, tie_word_embeddings=tie)
        else:
            text = LlamaSpec.from_hf(text_cfg, where=text_where, tie_word_embeddings=tie)
        require(
            where, "vision_feature_select_strategy", cfg.get("vision_feature_select_strategy", "default"), ["default"]
        )
        layer = cfg.get("vision_feature_layer", -1)
        n_states = vision.num_hidden_layers + 1
        if not isinstance(layer, int) or not -n_states <= layer < n_states:
            raise UnsupportedConfigError(
                f"{where}: vision_feature_layer={layer!r} is not supported (one layer index of {n_states} states)"
            )
        ratio = float(cfg.get("downsample_ratio", 0.5))
        block = round(1 / ratio)
        if abs(block * ratio - 1) > 1e-9 or vision.patches_per_side % block:
            raise UnsupportedConfigError(
                f"{where}: downsample_ratio={ratio} must be 1/k for an integer k dividing the "
                f"{vision.patches_per_side} patches per side"
            )
        return cls(
            text=text,
            vision=vision,
            image_token_id=int(cfg.get("image_token_id", 151667)),
            downsample_ratio=ratio,
            projector_hidden_act=require(
                where, "projector_hidden_act", cfg.get("projector_hidden_act", "gelu"), ACTIVATIONS
            ),
            vision_feature_layer=layer,
        )

    def to_hf(self) -> dict[str, Any]:
        if self.text.attention_bias:  # the Qwen2 decoder
            text = qwen2_text_config(self.text, "qwen2")
        else:
            text = self.text.to_hf()
            del text["architectures"]
        return {
            "model_type": "internvl",
            "architectures": ["InternVLForConditionalGeneration"],
            "text_config": text,
            "vision_config": self.vision.to_hf(),
            "image_token_id": self.image_token_id,
            "downsample_ratio": self.downsample_ratio,
            "projector_hidden_act": self.projector_hidden_act,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": "default",
            "tie_word_embeddings": self.text.tie_word_embeddings,
            "image_seq_length": self.features_per_image,
        }


def _norm(spec: InternVisionSpec, *, dtype, rngs: nnx.Rngs) -> LayerNorm | RMSNorm:
    norm = LayerNorm if spec.norm_type == "layer_norm" else RMSNorm
    return norm(spec.hidden_size, eps=spec.layer_norm_eps, dtype=dtype, rngs=rngs)


class PatchConv(Site):
    """The patch `Conv2d` (with bias) at stride = kernel, as one matmul over unfolded patches."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {
        "kernel": ("weight", (2, 3, 1, 0)),
        "bias": ("bias", (0,)),
    }

    def __init__(self, spec: InternVisionSpec, *, dtype, rngs: nnx.Rngs):
        p, c, d = spec.patch_size, spec.num_channels, spec.hidden_size
        self.patch = p
        self.kernel = param(rngs, (p, p, c, d), dtype, (None, None, None, "embed"))
        self.bias = param(rngs, (d,), dtype, ("embed",), init="zeros")

    def site_widths(self) -> tuple[None, int]:
        return None, self.bias.shape[0]

    def folder(self, end: str) -> Fold | None:
        if end != OUT:
            return None
        return lambda alpha: (scale_axis(self.kernel, alpha, 3), scale_axis(self.bias, alpha, 0))

    def forward(self, pixel_values: jax.Array) -> jax.Array:
        """`[tiles, channels, H, W]` -> `[tiles, patches, hidden]`, patches row-major."""
        b, c, h, w = pixel_values.shape
        p = self.patch
        x = pixel_values.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1)
        x = x.reshape(b, (h // p) * (w // p), p * p * c).astype(self.kernel.dtype)
        return x @ self.kernel[...].reshape(p * p * c, -1) + self.bias[...]


class PatchEmbeddings(nnx.Module):
    def __init__(self, spec: InternVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.projection = PatchConv(spec, dtype=dtype, rngs=rngs)


class InternVisionEmbeddings(Site):
    """`cat(cls_token, patches) + position_embeddings` (no interpolation: tiles have the tower's size)."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {
        "cls_token": ("cls_token", (0, 1, 2)),
        "position_embeddings": ("position_embeddings", (0, 1, 2)),
        "mask_token": ("mask_token", (0, 1, 2)),
    }

    def __init__(self, spec: InternVisionSpec, *, dtype, rngs: nnx.Rngs):
        d = spec.hidden_size
        self.cls_token = param(rngs, (1, 1, d), dtype, (None, None, "embed"))
        self.patch_embeddings = PatchEmbeddings(spec, dtype=dtype, rngs=rngs)
        positions = spec.patches_per_side**2 + 1
        self.position_embeddings = (
            param(rngs, (1, positions, d), dtype, (None, None, "embed"))
            if spec.use_absolute_position_embeddings
            else None
        )
        # Only read for masked-image pretraining; kept so the checkpoint's tensor has a home.
        self.mask_token = param(rngs, (1, 1, d), dtype, (None, None, "embed")) if spec.use_mask_token else None

    def site_widths(self) -> tuple[None, int]:
        return None, self.cls_token.shape[-1]

    def folder(self, end: str) -> Fold | None:
        if end != OUT:
            return None
        conv = self.patch_embeddings.projection.folder(OUT)

        def fold(alpha):
            scale_axis(self.cls_token, alpha, 2)
            conv(alpha)
            if self.position_embeddings is not None:
                scale_axis(self.position_embeddings, alpha, 2)

        return fold

    def forward(self, pixel_values: jax.Array) -> jax.Array:
        patches = self.patch_embeddings.projection(pixel_values)
        cls = jnp.broadcast_to(self.cls_token[...], (patches.shape[0], 1, patches.shape[-1]))
        x = jnp.concatenate([cls.astype(patches.dtype), patches], axis=1)
        return x if self.position_embeddings is None else x + self.position_embeddings[...]


class InternVisionAttention(Site):
    """Full attention over a tile's positions; the optional q/k RMSNorms act on the full width before the heads."""

    # The q/k norms follow the projections, so an input gate still folds into all three.
    output_linear, input_linears = "projection_layer", ("q_proj", "k_proj", "v_proj")

    def __init__(self, spec: InternVisionSpec, *, dtype, rngs: nnx.Rngs):
        d, bias = spec.hidden_size, spec.attention_bias
        self.num_heads, self.head_dim = spec.num_attention_heads, d // spec.num_attention_heads
        self.q_proj = Linear(d, d, use_bias=bias, axes=("embed", "heads"), dtype=dtype, rngs=rngs)
        self.k_proj = Linear(d, d, use_bias=bias, axes=("embed", "heads"), dtype=dtype, rngs=rngs)
        self.v_proj = Linear(d, d, use_bias=bias, axes=("embed", "heads"), dtype=dtype, rngs=rngs)
        self.projection_layer = Linear(d, d, use_bias=True, axes=("heads", "embed"), dtype=dtype, rngs=rngs)
        qk = spec.use_qk_norm
        self.q_norm = RMSNorm(d, eps=_QK_NORM_EPS, dtype=dtype, rngs=rngs) if qk else None
        self.k_norm = RMSNorm(d, eps=_QK_NORM_EPS, dtype=dtype, rngs=rngs) if qk else None

    def forward(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (y.reshape(b, t, self.num_heads, self.head_dim) for y in (q, k, v))
        return self.projection_layer(attend(q, k, v, scale=self.head_dim**-0.5).reshape(b, t, d))


class InternVisionLayer(Site):
    """Pre-norm block with layer scale: `x + lambda_1 * attn(norm(x))`, then `x + lambda_2 * mlp(norm(x))`."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {
        "lambda_1": ("lambda_1", (0,)),
        "lambda_2": ("lambda_2", (0,)),
    }

    def __init__(self, spec: InternVisionSpec, *, dtype, rngs: nnx.Rngs):
        d = spec.hidden_size
        self.attention = InternVisionAttention(spec, dtype=dtype, rngs=rngs)
        self.mlp = CLIPMLP(spec, dtype=dtype, rngs=rngs)  # the same fc1 / activation_fn / fc2 with biases
        self.layernorm_before = _norm(spec, dtype=dtype, rngs=rngs)
        self.layernorm_after = _norm(spec, dtype=dtype, rngs=rngs)
        self.lambda_1 = param(rngs, (d,), dtype, ("embed",), init="ones")
        self.lambda_2 = param(rngs, (d,), dtype, ("embed",), init="ones")

    def site_widths(self) -> tuple[int, int]:
        return self.lambda_1.shape[0], self.lambda_1.shape[0]

    def forward(self, x: jax.Array) -> jax.Array:
        x = x + self.lambda_1[...] * self.attention(self.layernorm_before(x))
        return x + self.lambda_2[...] * self.mlp(self.layernorm_after(x))


class InternVisionEncoder(nnx.Module):
    def __init__(self, spec: InternVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.layer = nnx.List([InternVisionLayer(spec, dtype=dtype, rngs=rngs) for _ in range(spec.num_hidden_layers)])


class InternVisionModel(ImageDomain, nnx.Module):
    def __init__(self, spec: InternVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.spec = spec
        self.embeddings = InternVisionEmbeddings(spec, dtype=dtype, rngs=rngs)
        self.encoder = InternVisionEncoder(spec, dtype=dtype, rngs=rngs)
        # transformers' final LayerNorm is an Identity when the tower mean-pools (the default).
        self.layernorm = (
            None
            if spec.use_mean_pooling
            else LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps, dtype=dtype, rngs=rngs)
        )

    def __call__(self, pixel_values: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        """HF's `hidden_states` (the embeddings, then each layer's output) and `last_hidden_state`."""
        h = self.embeddings(pixel_values)
        hidden_states = [h]
        for layer in self.encoder.layer:
            h = layer(h)
            hidden_states.append(h)
        return hidden_states, h if self.layernorm is None else self.layernorm(h)


class InternVLMultiModalProjector(ImageDomain, Site):
    """`linear_2(act(linear_1(LayerNorm(x))))`; an input gate does not fold (a LayerNorm comes first)."""

    output_linear, activation_feeds = "linear_2", "linear_2"

    def __init__(self, spec: InternVLSpec, *, dtype, rngs: nnx.Rngs):
        d_in, d = spec.vision.hidden_size * spec.shuffle**2, spec.text.hidden_size
        self.layer_norm = LayerNorm(d_in, eps=_PROJECTOR_EPS, dtype=dtype, rngs=rngs)
        self.linear_1 = Linear(d_in, d, use_bias=True, axes=(None, "embed"), dtype=dtype, rngs=rngs)
        self.act = Activation(spec.projector_hidden_act, d)
        self.linear_2 = Linear(d, d, use_bias=True, axes=("mlp", "embed"), dtype=dtype, rngs=rngs)

    def site_widths(self) -> tuple[int, int]:
        return self.linear_1.kernel.shape[0], self.linear_2.kernel.shape[1]

    def forward(self, x: jax.Array) -> jax.Array:
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))


def pixel_shuffle(x: jax.Array, block: int) -> jax.Array:
    """`[tiles, side, side, D]` -> `[tiles, (side/block)^2, block^2 D]`: feature `(i, j)` concatenates the
    patches `(block i + a, block j + b)` for `a`, then `b` (transformers' two view/permute steps)."""
    n, side, _, d = x.shape
    x = x.reshape(n, side // block, block, side // block, block, d).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (side // block) ** 2, block * block * d)


class InternVLModel(LlavaModel):
    tower_class, projector_class = InternVisionModel, InternVLMultiModalProjector

    def image_features(self, pixel_values: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """Projected features `[tiles, features_per_image, text_hidden]` and the tower's hidden states."""
        hidden_states, last = self.vision_tower(pixel_values)
        layer = self.spec.vision_feature_layer
        selected = (last if layer == -1 else hidden_states[layer])[:, 1:]
        side = self.spec.vision.patches_per_side
        grid = selected.reshape(selected.shape[0], side, side, -1)
        return self.multi_modal_projector(pixel_shuffle(grid, self.spec.shuffle)), hidden_states


def _runs(ids: np.ndarray, token: int) -> list[tuple[int, int]]:
    """(batch row, length) of each run of `token` in the batch, in order."""
    out = []
    for row, line in enumerate(np.asarray(ids)):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], line == token, [0]]).astype(np.int8)))
        out.extend((row, int(e - s)) for s, e in zip(edges[::2], edges[1::2]))
    return out


class InternVLForConditionalGeneration(LlavaForConditionalGeneration):
    """`model(input_ids, pixel_values=[tiles, 3, S, S], attention_mask=...)`: LLaVA's scatter-into-image-tokens
    interface over InternViT, pixel shuffle and InternVL's projector."""

    model_type, spec_class = "internvl", InternVLSpec
    backbone_class = InternVLModel
    # save_pretrained 5.24 and the hub's `-hf` repos (`language_model.model.`, `vision_tower.`, ...); the
    # in-memory layout passes through. It saves as LLaVA does.
    load_layout = (
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    )

    @classmethod
    def processor_class(cls) -> type:
        """transformers' processor without its video slot, and one tile per image unless a call asks for
        `crop_to_patches=True` (the SGM default: 256 tokens per image, one shape)."""
        return _processor()

    def check_inputs(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> None:
        """Tiles of the tower's size, each run of image tokens a whole number of tiles, all tiles placed."""
        CausalLM.check_inputs(self, input_ids, images)
        pixels, per_tile = images.get("pixel_values"), self.tokens_per_image
        side, channels = self.spec.vision.image_size, self.spec.vision.num_channels
        if pixels is not None and (np.ndim(pixels) != 4 or tuple(np.shape(pixels)[1:]) != (channels, side, side)):
            raise InputError(
                f"pixel_values is {list(np.shape(pixels))}; InternVL takes tiles [tiles, {channels}, {side}, {side}]"
            )
        runs = _runs(input_ids, self.image_token_id)
        bad = [(row, n) for row, n in runs if n % per_tile]
        tiles = 0 if pixels is None else len(pixels)
        found = sum(n for _, n in runs)
        if bad or found != tiles * per_tile:
            raise InputError(
                f"Image features and image tokens do not match: input_ids hold runs of {[n for _, n in runs]} "
                f"image tokens (id {self.image_token_id}) but {tiles} tile(s) give {tiles * per_tile} "
                f"features ({per_tile} per tile, so each run a multiple of {per_tile})"
            )

    def image_rows(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> np.ndarray:
        return np.asarray([row for row, _ in _runs(input_ids, self.image_token_id)], np.int32)

    def prepare_inputs(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, images: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Tiles padded to a power-of-two count, and each tile's image (-1 for a pad tile)."""
        if images.get("pixel_values") is None:
            return {}
        pixels = np.asarray(images["pixel_values"], np.float32)
        per_image = [n // self.tokens_per_image for _, n in _runs(input_ids, self.image_token_id)]
        bucket = 1 << max(len(pixels) - 1, 0).bit_length()
        padded = np.zeros((bucket,) + pixels.shape[1:], np.float32)
        padded[: len(pixels)] = pixels
        tile_images = np.full(bucket, -1, np.int32)
        tile_images[: len(pixels)] = np.repeat(np.arange(len(per_image)), per_image)
        return {"pixel_values": padded, "tile_images": tile_images}

    def pad_images(self, inputs: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """Tiles are already padded to a bucket; the image count enters no shape."""
        return dict(inputs)

    def embed(self, input_ids: jax.Array, pixel_values=None, tile_images=None) -> Embedded:
        embeds = self.decoder.embed_tokens(input_ids)
        if pixel_values is None:
            return Embedded(embeds)
        features, vision_hidden = self.model.image_features(jnp.asarray(pixel_values))
        embeds = scatter_image_features(embeds, input_ids, features, self.image_token_id)
        tiles = dict.fromkeys(("model.vision_tower", "model.multi_modal_projector"), jnp.asarray(tile_images))
        return Embedded(embeds, vision_hidden=vision_hidden, segments=tiles)  # rows are tiles: each one's image


@functools.cache
def _processor() -> type:
    """transformers' `InternVLProcessor` under its own name, without the video processor (which needs
    torchvision; sgm_jax takes no video), defaulting to one tile per image."""
    from transformers import InternVLProcessor as stock

    class InternVLProcessor(stock):
        # The stock signature less `video_processor`: transformers saves and reloads the arguments named here.
        def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kwargs):
            stock.__init__(
                self,
                image_processor,
                tokenizer,
                image_seq_length=image_seq_length,
                chat_template=chat_template,
                **kwargs,
            )

        def __call__(self, *args, **kwargs):
            return stock.__call__(self, *args, **{"crop_to_patches": False, **kwargs})

    return InternVLProcessor
