"""Llama-3.2-Vision (Mllama): a tiled ViT whose features enter a Llama-3 decoder through gated cross-attention
layers, not through image tokens in the sequence.

The vision model runs every image's `max_num_tiles` tiles jointly (local then gated global transformer), and its
final state concatenated with intermediate layers' states is projected to the text width. Cross-attention layers
attend from text to those features under `cross_attention_mask`; rows with no image attend uniformly and their
MLP is zeroed, as transformers does. A batch without images skips the cross layers (a second compiled variant).
The cross keys (normed) and values are computed once at prefill and kept as each cross layer's cache entry,
with the last prompt row's mask that every decoded token repeats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.models.attention import attend
from sgm_jax.models.causal_lm import CausalLM, Embedded
from sgm_jax.models.clip import CLIPMLP, PatchEmbedding, VisionSelfAttention
from sgm_jax.models.config import UnsupportedConfigError, check_fields, require
from sgm_jax.models.decoder import DecoderContext
from sgm_jax.models.layers import ACTIVATIONS, Embedding, LayerNorm, Linear, RMSNorm, param
from sgm_jax.models.llama import (
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaModel,
    LlamaSpec,
    read_llama3_rope,
)
from sgm_jax.models.site import ImageDomain, Site
from sgm_jax.runtime.errors import InputError

# The vision model's two outer LayerNorms use torch's default eps, not `norm_eps`.
_OUTER_NORM_EPS = 1e-5
# Which state of each listed vision layer feeds the projector: its output (transformers 5.x) or its input
# (transformers 4.x and Meta's reference implementation).
INTERMEDIATE_SOURCES = ("output", "input")


@dataclasses.dataclass(frozen=True)
class MllamaVisionSpec:
    hidden_size: int
    hidden_act: str
    num_hidden_layers: int
    num_global_layers: int
    attention_heads: int
    num_channels: int
    intermediate_size: int
    vision_output_dim: int
    image_size: int
    patch_size: int
    norm_eps: float
    max_num_tiles: int
    intermediate_layers_indices: tuple[int, ...]
    num_aspect_ratios: int
    intermediate_layers_source: str = "output"

    @property
    def num_patches(self) -> int:
        """Positions per tile, the class token included."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def padded_patches(self) -> int:
        """Positions per tile after transformers pads them to a multiple of 8."""
        return -(-self.num_patches // 8) * 8

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, where: str) -> MllamaVisionSpec:
        require(where, "model_type", cfg.get("model_type"), ["mllama_vision_model"])
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("num_aspect_ratios",)]
        check_fields(cfg, where=where, used=names + ["supported_aspect_ratios"])
        require(where, "hidden_act", cfg.get("hidden_act", "gelu"), ACTIVATIONS)
        source = require(
            where, "intermediate_layers_source", cfg.get("intermediate_layers_source", "output"), INTERMEDIATE_SOURCES
        )
        sizes = {}
        for name in ("image_size", "patch_size"):
            value = cfg[name]
            sides = list(value) if isinstance(value, (list, tuple)) else [value, value]
            if len(sides) != 2 or sides[0] != sides[1]:
                raise UnsupportedConfigError(f"{where}: {name}={value!r} is not supported (square sizes only)")
            sizes[name] = int(sides[0])
        indices = tuple(int(i) for i in cfg.get("intermediate_layers_indices") or (3, 7, 15, 23, 30))
        layers, d = cfg["num_hidden_layers"], cfg["hidden_size"]
        low = 1 if source == "input" else 0
        if any(not low <= i < layers for i in indices):
            raise UnsupportedConfigError(f"{where}: intermediate_layers_indices={list(indices)} out of range")
        if cfg["vision_output_dim"] != d * (len(indices) + 1):
            raise UnsupportedConfigError(
                f"{where}: vision_output_dim={cfg['vision_output_dim']} must be hidden_size x "
                f"(intermediate layers + 1) = {d * (len(indices) + 1)}"
            )
        ratios = cfg.get("supported_aspect_ratios") or [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]
        return cls(
            hidden_size=d,
            hidden_act=cfg.get("hidden_act", "gelu"),
            num_hidden_layers=layers,
            num_global_layers=cfg["num_global_layers"],
            attention_heads=cfg["attention_heads"],
            num_channels=cfg.get("num_channels", 3),
            intermediate_size=cfg["intermediate_size"],
            vision_output_dim=cfg["vision_output_dim"],
            norm_eps=cfg.get("norm_eps", 1e-5),
            max_num_tiles=cfg["max_num_tiles"],
            intermediate_layers_indices=indices,
            num_aspect_ratios=len(ratios),
            intermediate_layers_source=source,
            **sizes,
        )

    def to_hf(self, supported_aspect_ratios: list) -> dict[str, Any]:
        out = {"model_type": "mllama_vision_model", **dataclasses.asdict(self)}
        del out["num_aspect_ratios"]
        out["intermediate_layers_indices"] = list(self.intermediate_layers_indices)
        out["supported_aspect_ratios"] = supported_aspect_ratios
        return out


@dataclasses.dataclass(frozen=True)
class MllamaSpec:
    text: LlamaSpec
    vision: MllamaVisionSpec
    cross_attention_layers: tuple[int, ...]
    image_token_id: int
    supported_aspect_ratios: tuple[tuple[int, int], ...]
    # The text config's special ids, written back on export: transformers sizes `padding_idx` from its pad id.
    text_special_tokens: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, where: str = "config") -> MllamaSpec:
        require(where, "model_type", cfg.get("model_type"), ["mllama"])
        check_fields(
            cfg, where=where, used=["text_config", "vision_config", "image_token_index", "tie_word_embeddings"]
        )
        vision_cfg = cfg["vision_config"]
        vision = MllamaVisionSpec.from_hf(vision_cfg, where=f"{where}.vision_config")
        text_cfg, text_where = cfg["text_config"], f"{where}.text_config"
        require(text_where, "model_type", text_cfg.get("model_type"), ["mllama_text_model"])
        check_fields(
            text_cfg,
            where=text_where,
            used=[
                "vocab_size",
                "hidden_size",
                "hidden_act",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
                "rope_parameters",
                "rms_norm_eps",
                "tie_word_embeddings",
                "cross_attention_layers",
            ],
            inert=["dropout"],
        )
        require(text_where, "hidden_act", text_cfg.get("hidden_act", "silu"), ACTIVATIONS)
        rope = text_cfg.get("rope_parameters") or {"rope_type": "default", "rope_theta": 500000.0}
        heads = text_cfg["num_attention_heads"]
        text = LlamaSpec(
            vocab_size=text_cfg["vocab_size"],
            hidden_size=text_cfg["hidden_size"],
            intermediate_size=text_cfg["intermediate_size"],
            num_hidden_layers=text_cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=text_cfg.get("num_key_value_heads") or heads,
            head_dim=text_cfg["hidden_size"] // heads,
            hidden_act=text_cfg.get("hidden_act", "silu"),
            rms_norm_eps=text_cfg.get("rms_norm_eps", 1e-5),
            rope_theta=float(rope["rope_theta"]),
            rope_llama3=read_llama3_rope(rope, text_where),
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", text_cfg.get("tie_word_embeddings", False))),
        )
        cross = tuple(int(i) for i in text_cfg.get("cross_attention_layers") or ())
        if any(not 0 <= i < text.num_hidden_layers for i in cross):
            raise UnsupportedConfigError(f"{text_where}: cross_attention_layers={list(cross)} out of range")
        ratios = vision_cfg.get("supported_aspect_ratios") or [
            [1, 1],
            [1, 2],
            [1, 3],
            [1, 4],
            [2, 1],
            [2, 2],
            [3, 1],
            [4, 1],
        ]
        return cls(
            text=text,
            vision=vision,
            cross_attention_layers=cross,
            image_token_id=int(cfg.get("image_token_index", 128256)),
            supported_aspect_ratios=tuple((int(h), int(w)) for h, w in ratios),
            text_special_tokens=tuple(
                (name, _hashable(text_cfg[name]))
                for name in ("bos_token_id", "eos_token_id", "pad_token_id")
                if text_cfg.get(name) is not None
            ),
        )

    def to_hf(self) -> dict[str, Any]:
        t = self.text
        text = {
            "model_type": "mllama_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "hidden_act": t.hidden_act,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "intermediate_size": t.intermediate_size,
            "rope_parameters": t.rope_parameters(),
            "rms_norm_eps": t.rms_norm_eps,
            "tie_word_embeddings": t.tie_word_embeddings,
            "cross_attention_layers": list(self.cross_attention_layers),
            **{name: list(value) if isinstance(value, tuple) else value for name, value in self.text_special_tokens},
        }
        return {
            "model_type": "mllama",
            "architectures": ["MllamaForConditionalGeneration"],
            "text_config": text,
            "vision_config": self.vision.to_hf([list(r) for r in self.supported_aspect_ratios]),
            "image_token_index": self.image_token_id,
            "tie_word_embeddings": t.tie_word_embeddings,
        }


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# -- vision -------------------------------------------------------------------------------------------------


class Table(nnx.Module):
    """A lookup table (`nn.Embedding` weight) read by aspect-ratio id; not a site (HF computes these without the
    batch, and the tile-position table is too wide to gate usefully). Its width (tiles x positions x D, 73.8M
    parameters for 11B) is sharded like an embedding axis."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"embedding": ("weight", (0, 1))}

    def __init__(self, rows: int, width: int, *, dtype, rngs: nnx.Rngs):
        self.embedding = param(rngs, (rows, width), dtype, (None, "embed"))


class AspectRatioEmbedding(nnx.Module):
    """`x + tanh(gate) * table[aspect_ratio_id]`, one vector per tile."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"gate": ("gate", (0,))}

    def __init__(self, spec: MllamaVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.embedding = Table(
            spec.num_aspect_ratios + 1, spec.max_num_tiles * spec.hidden_size, dtype=dtype, rngs=rngs
        )
        self.gate = param(rngs, (1,), dtype, (None,))

    def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        """`x` `[images, tiles, positions, D]`."""
        table = jnp.take(self.embedding.embedding[...], aspect_ratio_ids, axis=0)
        return x + jnp.tanh(self.gate[...]) * table.reshape(x.shape[0], x.shape[1], 1, x.shape[-1])


class GatedPositionalEmbedding(nnx.Module):
    """`x + (1 - tanh(gate)) * positions + tanh(gate) * tile_table[aspect_ratio_id]`."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {
        "embedding": ("embedding", (0, 1)),
        "gate": ("gate", (0,)),
    }

    def __init__(self, spec: MllamaVisionSpec, *, dtype, rngs: nnx.Rngs):
        n, d = spec.num_patches, spec.hidden_size
        self.embedding = param(rngs, (n, d), dtype, (None, "embed"))
        self.gate = param(rngs, (1,), dtype, (None,))
        self.tile_embedding = Table(spec.num_aspect_ratios + 1, spec.max_num_tiles * n * d, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        gate = jnp.tanh(self.gate[...])
        x = x + (1 - gate) * self.embedding[...][None, None]
        tiles = jnp.take(self.tile_embedding.embedding[...], aspect_ratio_ids, axis=0)
        return x + gate * tiles.reshape(x.shape)


class MllamaVisionAttention(VisionSelfAttention):
    output_linear, use_bias = "o_proj", False


class MllamaVisionEncoderLayer(Site):
    """Pre-norm block; the global transformer's blocks scale both branches by `tanh(gate_attn / gate_ffn)`."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {
        "gate_attn": ("gate_attn", (0,)),
        "gate_ffn": ("gate_ffn", (0,)),
    }

    def __init__(self, spec: MllamaVisionSpec, *, gated: bool, dtype, rngs: nnx.Rngs):
        d = spec.hidden_size
        self.self_attn = MllamaVisionAttention(spec.hidden_size, spec.attention_heads, dtype=dtype, rngs=rngs)
        self.mlp = CLIPMLP(spec, dtype=dtype, rngs=rngs)
        self.input_layernorm = LayerNorm(d, eps=spec.norm_eps, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = LayerNorm(d, eps=spec.norm_eps, dtype=dtype, rngs=rngs)
        self.gate_attn = param(rngs, (1,), dtype, (None,)) if gated else None
        self.gate_ffn = param(rngs, (1,), dtype, (None,)) if gated else None

    def site_widths(self) -> tuple[int, int]:
        return self.input_layernorm.site_widths()

    def forward(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        a = self.self_attn(self.input_layernorm(x), bias)
        x = x + (a if self.gate_attn is None else jnp.tanh(self.gate_attn[...]) * a)
        m = self.mlp(self.post_attention_layernorm(x))
        return x + (m if self.gate_ffn is None else jnp.tanh(self.gate_ffn[...]) * m)


class MllamaVisionEncoder(nnx.Module):
    def __init__(self, spec: MllamaVisionSpec, layers: int, *, gated: bool, dtype, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [MllamaVisionEncoderLayer(spec, gated=gated, dtype=dtype, rngs=rngs) for _ in range(layers)]
        )


class MllamaVisionModel(ImageDomain, nnx.Module):
    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"class_embedding": ("class_embedding", (0,))}

    def __init__(self, spec: MllamaVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.spec = spec
        d = spec.hidden_size
        self.patch_embedding = PatchEmbedding(spec, dtype=dtype, rngs=rngs)
        self.class_embedding = param(rngs, (d,), dtype, ("embed",))
        self.gated_positional_embedding = GatedPositionalEmbedding(spec, dtype=dtype, rngs=rngs)
        self.pre_tile_positional_embedding = AspectRatioEmbedding(spec, dtype=dtype, rngs=rngs)
        self.post_tile_positional_embedding = AspectRatioEmbedding(spec, dtype=dtype, rngs=rngs)
        self.layernorm_pre = LayerNorm(d, eps=_OUTER_NORM_EPS, dtype=dtype, rngs=rngs)
        self.layernorm_post = LayerNorm(d, eps=_OUTER_NORM_EPS, dtype=dtype, rngs=rngs)
        self.transformer = MllamaVisionEncoder(spec, spec.num_hidden_layers, gated=False, dtype=dtype, rngs=rngs)
        self.global_transformer = MllamaVisionEncoder(spec, spec.num_global_layers, gated=True, dtype=dtype, rngs=rngs)

    def __call__(
        self, pixel_values: jax.Array, aspect_ratio_ids: jax.Array, aspect_ratio_mask: jax.Array
    ) -> tuple[jax.Array, list[jax.Array]]:
        """`[B, images, tiles, 3, S, S]` -> features `[B, images, tiles, num_patches, vision_output_dim]`, and the
        hidden states of both transformers (`[B * images, tiles * padded_patches, D]`)."""
        spec = self.spec
        b, n, t = pixel_values.shape[:3]
        images, d, np_, lp = b * n, spec.hidden_size, spec.num_patches, spec.padded_patches
        ids = aspect_ratio_ids.reshape(images)
        x = self.patch_embedding(
            pixel_values.reshape((images * t,) + pixel_values.shape[3:]).astype(self.class_embedding.dtype)
        )
        x = self.pre_tile_positional_embedding(x.reshape(images, t, np_ - 1, d), ids)
        cls = jnp.broadcast_to(self.class_embedding[...], (images, t, 1, d)).astype(x.dtype)
        x = self.gated_positional_embedding(jnp.concatenate([cls, x], axis=2), ids)
        x = self.layernorm_pre(x.reshape(images, t * np_, d)).reshape(images, t, np_, d)  # sites see 3-D rows
        x = jnp.pad(x, ((0, 0), (0, 0), (0, lp - np_), (0, 0))).reshape(images, t * lp, d)
        valid = (aspect_ratio_mask.reshape(images, t, 1) > 0) & (jnp.arange(lp) < np_)[None, None]
        invalid = ~valid.reshape(images, t * lp)
        # transformers' odd mask: a key is hidden from a query only when both are padding.
        bias = jnp.where(invalid[:, None, :, None] & invalid[:, None, None, :], jnp.finfo(x.dtype).min, 0.0)
        bias = bias.astype(x.dtype)
        hidden = [x]
        for layer in self.transformer.layers:
            x = layer(x, bias)
            hidden.append(x)
        # hidden[i + 1] is layer i's output, hidden[i] its input.
        offset = 1 if spec.intermediate_layers_source == "output" else 0
        intermediate = jnp.stack([hidden[i + offset] for i in spec.intermediate_layers_indices], axis=-1)
        x = self.layernorm_post(x)
        x = self.post_tile_positional_embedding(x.reshape(images, t, lp, d), ids).reshape(images, t * lp, d)
        for layer in self.global_transformer.layers:
            x = layer(x, bias)
            hidden.append(x)
        final = x.reshape(images, t, lp, d)[:, :, :np_]
        intermediate = intermediate.reshape(images, t, lp, -1)[:, :, :np_]
        features = jnp.concatenate([final, intermediate], axis=-1)
        return features.reshape(b, n, t, np_, -1), hidden


# -- text ---------------------------------------------------------------------------------------------------


class MllamaTextCrossAttention(Site):
    """Attention from text to the projected vision features: q/k RMSNorms over the head, no RoPE, GQA."""

    output_linear, input_linears = "o_proj", ("q_proj",)

    def __init__(self, spec: LlamaSpec, *, dtype, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads, self.head_dim = (
            spec.num_attention_heads,
            spec.num_key_value_heads,
            spec.head_dim,
        )
        d, q, kv = spec.hidden_size, spec.num_attention_heads * spec.head_dim, spec.num_key_value_heads * spec.head_dim
        layer = dict(dtype=dtype, rngs=rngs)
        self.q_proj = Linear(d, q, use_bias=False, axes=("embed", "heads"), **layer)
        self.k_proj = Linear(d, kv, use_bias=False, axes=("embed", "kv_heads"), **layer)
        self.v_proj = Linear(d, kv, use_bias=False, axes=("embed", "kv_heads"), **layer)
        self.o_proj = Linear(q, d, use_bias=False, axes=("heads", "embed"), **layer)
        self.q_norm = RMSNorm(spec.head_dim, eps=spec.rms_norm_eps, **layer)
        self.k_norm = RMSNorm(spec.head_dim, eps=spec.rms_norm_eps, **layer)

    def keys_values(self, states: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Normed keys and values `[batch, vision tokens, kv_heads, head_dim]` of the projected features."""
        b, s, _ = states.shape
        k = self.k_norm(self.k_proj(states).reshape(b, s, self.num_kv_heads, self.head_dim))
        return k, self.v_proj(states).reshape(b, s, self.num_kv_heads, self.head_dim)

    def forward(self, x: jax.Array, keys: jax.Array, values: jax.Array, bias: jax.Array) -> jax.Array:
        """`bias` `[batch, query, vision tokens]`: 0 where allowed, the dtype's min elsewhere (rows with nothing
        allowed are all 0: they attend uniformly)."""
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim))
        out = attend(q, keys, values, bias=bias[:, None], scale=self.head_dim**-0.5)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))


@dataclasses.dataclass(frozen=True)
class MllamaCross:
    """The images as the cross layers read them in one call: the projected vision tokens `[batch, vision
    tokens, H]`, the attention bias `[batch, text, vision tokens]` and the row mask `[batch, text]`."""

    states: jax.Array
    bias: jax.Array
    row: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CrossKV:
    """A cross layer's cache entry: the prompt's normed vision keys and values, and its last row's bias and row
    mask `[batch, 1, ...]`, which every decoded token repeats."""

    keys: jax.Array
    values: jax.Array
    bias: jax.Array
    row: jax.Array


class MllamaCrossAttentionDecoderLayer(Site):
    """`h = x + tanh(g_attn) * cross_attn(norm x)`; `h + tanh(g_mlp) * row * mlp(norm h)`."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {
        "cross_attn_attn_gate": ("cross_attn_attn_gate", (0,)),
        "cross_attn_mlp_gate": ("cross_attn_mlp_gate", (0,)),
    }

    def __init__(self, spec: LlamaSpec, *, dtype, rngs: nnx.Rngs):
        d = spec.hidden_size
        self.cross_attn = MllamaTextCrossAttention(spec, dtype=dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(d, eps=spec.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = LlamaMLP(d, spec.intermediate_size, act=spec.hidden_act, bias=False, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(d, eps=spec.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.cross_attn_attn_gate = param(rngs, (1,), dtype, (None,))
        self.cross_attn_mlp_gate = param(rngs, (1,), dtype, (None,))

    def site_widths(self) -> tuple[int, int]:
        return self.input_layernorm.site_widths()

    def __call__(self, x: jax.Array, context: DecoderContext, entry: CrossKV | None = None):
        if context.extras is None and entry is None:
            return x, None  # no image anywhere: transformers skips the layer (and so do its gates)
        return super().__call__(x, context, entry)

    def forward(
        self, x: jax.Array, context: DecoderContext, entry: CrossKV | None = None
    ) -> tuple[jax.Array, CrossKV | None]:
        """With images in this call, attend to them (a cached call keeps their keys as the entry); without,
        attend to the entry a cached prefill kept."""
        cross: MllamaCross | None = context.extras
        if cross is not None:
            keys, values = self.cross_attn.keys_values(cross.states)
            bias, row = cross.bias, cross.row
            if context.write_at is not None:
                entry = CrossKV(keys, values, bias[:, -1:], row[:, -1:])
        else:
            t = x.shape[1]
            keys, values = entry.keys, entry.values
            bias, row = jnp.repeat(entry.bias, t, axis=1), jnp.repeat(entry.row, t, axis=1)
        h = x + jnp.tanh(self.cross_attn_attn_gate[...]) * self.cross_attn(self.input_layernorm(x), keys, values, bias)
        m = self.mlp(self.post_attention_layernorm(h)) * row[..., None].astype(h.dtype)
        return h + jnp.tanh(self.cross_attn_mlp_gate[...]) * m, entry


class MllamaTextModel(LlamaModel):
    """Llama-3's decoder with cross-attention layers at `cross_attention_layers`; `vocab + 8` embedding rows."""

    def __init__(self, spec: MllamaSpec, *, dtype, rngs: nnx.Rngs):
        text = spec.text
        self.spec = text
        self.cross_layers = spec.cross_attention_layers
        self.embed_tokens = Embedding(
            text.vocab_size + 8, text.hidden_size, axes=("vocab", "embed"), dtype=dtype, rngs=rngs
        )
        self.layers = nnx.List(
            [
                (MllamaCrossAttentionDecoderLayer if i in self.cross_layers else LlamaDecoderLayer)(
                    text, dtype=dtype, rngs=rngs
                )
                for i in range(text.num_hidden_layers)
            ]
        )
        self.norm = RMSNorm(text.hidden_size, eps=text.rms_norm_eps, dtype=dtype, rngs=rngs)

    def cache_entry(self, layer: nnx.Module, batch: int, max_len: int) -> Any:
        """A cross layer keeps nothing until a prefill with images gives it their keys."""
        if isinstance(layer, MllamaCrossAttentionDecoderLayer):
            return None
        return super().cache_entry(layer, batch, max_len)


def cross_bias(allowed: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """transformers' `_prepare_cross_attention_mask`: a bias of 0 / min, zeroed on rows allowing nothing (which
    then attend uniformly), and that row mask."""
    row = allowed.any(-1)
    bias = jnp.where(allowed, 0.0, jnp.finfo(dtype).min) * row[..., None]
    return bias.astype(dtype), row


class MllamaModel(nnx.Module):
    def __init__(self, spec: MllamaSpec, *, dtype, rngs: nnx.Rngs):
        self.spec = spec
        self.vision_model = MllamaVisionModel(spec.vision, dtype=dtype, rngs=rngs)
        self.language_model = MllamaTextModel(spec, dtype=dtype, rngs=rngs)
        self.multi_modal_projector = MllamaProjector(spec, dtype=dtype, rngs=rngs)


class MllamaProjector(ImageDomain, Linear):
    """`nn.Linear(vision_output_dim -> H)` at `model.multi_modal_projector` (a site, image domain)."""

    def __init__(self, spec: MllamaSpec, *, dtype, rngs: nnx.Rngs):
        super().__init__(
            spec.vision.vision_output_dim,
            spec.text.hidden_size,
            use_bias=True,
            axes=(None, "embed"),
            dtype=dtype,
            rngs=rngs,
        )


_IMAGE_INPUTS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")


def text_cross_attention_mask(input_ids: np.ndarray, image_token: int, aspect_ratio_mask: np.ndarray) -> np.ndarray:
    """The processor's `cross_attention_mask` `[B, L, images, tiles]`: the tokens from each `<|image|>` up to the
    next one attend to that image's tiles, the last image's through the end of the row, and a run of adjacent
    `<|image|>` tokens all attend through the end of the text after the run."""
    ids = np.asarray(input_ids)
    b, length = ids.shape
    images, tiles = aspect_ratio_mask.shape[1:]
    out = np.zeros((b, length, images, tiles), np.int64)
    for row in range(b):
        starts = np.flatnonzero(ids[row] == image_token).tolist()
        spans = [[start, end] for start, end in zip(starts, starts[1:] + [length])]
        last_end = length
        for span in reversed(spans):
            if span[0] == span[1] - 1:
                span[1] = last_end
            last_end = span[1]
        for k, (start, end) in enumerate(spans[:images]):
            out[row, start:end, k] = aspect_ratio_mask[row, k]
    return out


class MllamaForConditionalGeneration(CausalLM):
    """`model(input_ids, pixel_values=[B, images, tiles, 3, S, S], aspect_ratio_ids=..., aspect_ratio_mask=...,
    cross_attention_mask=..., attention_mask=...)`, as in transformers."""

    model_type, spec_class, decoder_layers = "mllama", MllamaSpec, "model.language_model.layers"
    backbone_class = MllamaModel
    image_inputs = _IMAGE_INPUTS
    load_layout = (
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_model.", "model.vision_model."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    )
    save_layout = (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_model.", "vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    )

    @property
    def tokens_per_image(self) -> int:
        return 1  # `<|image|>` is one ordinary token; the images enter through cross-attention

    def _rows_with_images(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> dict[str, Any]:
        """Image inputs with one entry per batch row: the processor gives that, but a batch collated from
        single samples holds entries only for rows with `<|image|>` tokens, which are spread over the rows."""
        pixels, ids = images.get("pixel_values"), np.asarray(input_ids)
        if pixels is None or len(pixels) == len(ids):
            return dict(images)
        rows = np.flatnonzero((ids == self.image_token_id).any(1))
        if len(rows) != len(pixels):
            raise InputError(
                f"pixel_values holds {len(pixels)} row(s) of images but input_ids has {len(ids)} rows, "
                f"{len(rows)} of them with <|image|> tokens (id {self.image_token_id})"
            )
        spread = {}
        for name in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
            value = np.asarray(images[name]) if images.get(name) is not None else None
            if value is not None:
                spread[name] = np.zeros((len(ids),) + value.shape[1:], value.dtype)
                spread[name][rows] = value
        return {**images, **spread}

    def check_inputs(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> None:
        """The processor's shapes, aspect-ratio ids in range, and a cross mask over the images given."""
        super().check_inputs(input_ids, images)
        images = self._rows_with_images(input_ids, images)
        pixels = images.get("pixel_values")
        if pixels is None:
            if any(images.get(name) is not None for name in _IMAGE_INPUTS):
                raise InputError("aspect_ratio_ids, aspect_ratio_mask and cross_attention_mask need pixel_values")
            return
        v, ids = self.spec.vision, np.asarray(input_ids)
        shape = tuple(np.shape(pixels))
        expected = (v.max_num_tiles, v.num_channels, v.image_size, v.image_size)
        if len(shape) != 6 or shape[0] != ids.shape[0] or shape[3:] != expected[1:] or shape[2] != v.max_num_tiles:
            raise InputError(
                f"pixel_values is {list(shape)}; Mllama takes [batch={ids.shape[0]}, images, {v.max_num_tiles}, "
                f"{v.num_channels}, {v.image_size}, {v.image_size}]"
            )
        b, n = shape[:2]
        for name, want in (("aspect_ratio_ids", (b, n)), ("aspect_ratio_mask", (b, n, v.max_num_tiles))):
            value = images.get(name)
            if value is None or tuple(np.shape(value)) != want:
                found = None if value is None else list(np.shape(value))
                raise InputError(f"{name} must be {list(want)} for pixel_values {list(shape)}, got {found}")
        ratio_ids = np.asarray(images["aspect_ratio_ids"])
        bad = np.argwhere((ratio_ids < 0) | (ratio_ids > v.num_aspect_ratios))
        if len(bad):
            raise InputError(
                f"aspect_ratio_ids must lie in [0, {v.num_aspect_ratios}] (0: no image; the config supports "
                f"{v.num_aspect_ratios} aspect ratios), got {int(ratio_ids[tuple(bad[0])])} at [row, image] "
                f"{bad[0].tolist()}"
            )
        cross = images.get("cross_attention_mask")
        if cross is not None and tuple(np.shape(cross)) != (b, ids.shape[1], n, v.max_num_tiles):
            raise InputError(
                f"cross_attention_mask is {list(np.shape(cross))}; for {n} image(s) per row it must be "
                f"[{b}, {ids.shape[1]}, {n}, {v.max_num_tiles}]"
            )

    def image_rows(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> np.ndarray:
        """Image `b * images + i` is row b's; a padding image (aspect-ratio id 0) is no row's (-1)."""
        ids = np.asarray(self._rows_with_images(input_ids, images)["aspect_ratio_ids"])
        rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
        return np.where(ids.reshape(-1) > 0, rows, -1).astype(np.int32)

    def pad_images(self, inputs: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """Images are `[batch, images]` already: the count enters no other shape."""
        return dict(inputs)

    def prepare_inputs(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, images: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """The processor's arrays, with `cross_attention_mask` left-padded to the tokens (or derived from the
        `<|image|>` tokens when absent, as the processor builds it), and per-position image segments."""
        if images.get("pixel_values") is None:
            return {}
        ids = np.asarray(input_ids)
        images = self._rows_with_images(ids, images)
        ratio_mask = np.asarray(images["aspect_ratio_mask"], np.int64)
        cross = images.get("cross_attention_mask")
        if cross is None:
            cross = text_cross_attention_mask(ids, self.image_token_id, ratio_mask)
        cross = np.asarray(cross, np.int64)
        cross = np.pad(cross, ((0, 0), (ids.shape[1] - cross.shape[1], 0), (0, 0), (0, 0)))
        return {
            "pixel_values": np.asarray(images["pixel_values"], np.float32),
            "aspect_ratio_ids": np.asarray(images["aspect_ratio_ids"], np.int32),
            "aspect_ratio_mask": ratio_mask.astype(np.int32),
            "cross_attention_mask": cross.astype(np.int32),
        }

    @property
    def decoder(self) -> MllamaTextModel:
        return self.model.language_model

    def embed(
        self, input_ids, pixel_values=None, aspect_ratio_ids=None, aspect_ratio_mask=None, cross_attention_mask=None
    ) -> Embedded:
        """Token embeddings, and with images the cross layers' inputs (`MllamaCross`), the vision hidden states
        and the image segments of the vision rows' positions and of the projector's."""
        embeds = self.decoder.embed_tokens(input_ids)
        if pixel_values is None:
            return Embedded(embeds)
        v = self.spec.vision
        features, hidden = self.model.vision_model(
            jnp.asarray(pixel_values), jnp.asarray(aspect_ratio_ids), jnp.asarray(aspect_ratio_mask)
        )
        b, n, t = features.shape[:3]
        projected = self.model.multi_modal_projector(features.reshape(b * n, t * v.num_patches, -1))
        states = projected.reshape(b, n * t * v.num_patches, -1)
        mask = jnp.asarray(cross_attention_mask) > 0
        allowed = jnp.repeat(mask, v.num_patches, axis=3).reshape(mask.shape[0], mask.shape[1], -1)
        image = jnp.arange(b * n).reshape(b * n, 1)
        tiles = jnp.asarray(aspect_ratio_mask).reshape(b * n, t, 1) > 0
        real = jnp.asarray(aspect_ratio_ids).reshape(b * n, 1, 1) > 0
        vision_valid = tiles & real & (jnp.arange(v.padded_patches) < v.num_patches)
        projector_valid = jnp.broadcast_to(tiles & real, (b * n, t, v.num_patches))
        segments = {
            root: jnp.where(valid.reshape(b * n, -1), image, -1).reshape(-1)
            for root, valid in (("model.vision_model", vision_valid), ("model.multi_modal_projector", projector_valid))
        }
        cross = MllamaCross(states, *cross_bias(allowed, states.dtype))
        return Embedded(embeds, extras=cross, vision_hidden=hidden, segments=segments)
