"""Llama decoder (LLaVA-1.5's Vicuna, plain Llama causal LMs) as Flax NNX modules named like HF's."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.models.attention import attend
from sgm_jax.models.cache import KVCache, LayerKV, self_attention_entry
from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.models.config import UnsupportedConfigError, check_fields, require
from sgm_jax.models.decoder import CAUSAL, DecoderContext, run_layers
from sgm_jax.models.layers import ACTIVATIONS, Activation, Embedding, Linear, RMSNorm
from sgm_jax.models.site import Site


def decoder_shape(cfg: dict[str, Any], where: str, head_dim: int | None, tie: bool | None) -> dict[str, Any]:
    """The fields every Llama-shaped text config states alike (sizes, heads, activation, norm eps, tying), checked:
    a supported activation, query heads a multiple of key-value heads. `head_dim` None: hidden size / heads;
    `tie` None: the config's own `tie_word_embeddings`."""
    require(where, "hidden_act", cfg["hidden_act"], ACTIVATIONS)
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if heads % kv_heads:
        raise UnsupportedConfigError(
            f"{where}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
        )
    return {
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim or cfg["hidden_size"] // heads,
        "hidden_act": cfg["hidden_act"],
        "rms_norm_eps": cfg["rms_norm_eps"],
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False) if tie is None else tie),
    }


@dataclasses.dataclass(frozen=True)
class LlamaSpec:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_act: str
    rms_norm_eps: float
    rope_theta: float
    attention_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    o_proj_bias: bool = False
    """Qwen2 has biases on q/k/v but none on o_proj; Llama's `attention_bias` covers all four."""
    mrope_section: tuple[int, ...] = ()
    """Qwen2-VL's multimodal RoPE: how many frequencies follow the t, h and w positions (empty: 1-D RoPE)."""
    rope_llama3: tuple[float, float, float, int] = ()
    """Llama-3's frequency scaling: (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)."""

    def inv_freq(self) -> np.ndarray:
        """RoPE's inverse frequencies `[head_dim / 2]` (float32, as transformers computes them)."""
        return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_llama3)

    @classmethod
    def from_hf(
        cls, cfg: dict[str, Any], *, where: str = "config", tie_word_embeddings: bool | None = None
    ) -> LlamaSpec:
        """Read a `LlamaConfig.to_dict()`; `tie_word_embeddings` overrides the field (LLaVA keeps it on top)."""
        require(where, "model_type", cfg.get("model_type"), ["llama"])
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "rope_theta"]
        check_fields(
            cfg, where=where, used=fields + ["rope_parameters", "rope_theta", "rope_scaling"], inert=["pretraining_tp"]
        )
        rope = cfg.get("rope_parameters") or {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0)}
        llama3 = read_llama3_rope(rope, where)
        if cfg.get("rope_scaling"):
            raise UnsupportedConfigError(f"{where}: rope_scaling={cfg['rope_scaling']!r} is not supported")
        return cls(
            **decoder_shape(cfg, where, cfg.get("head_dim"), tie_word_embeddings),
            rope_theta=float(rope["rope_theta"]),
            rope_llama3=llama3,
            attention_bias=bool(cfg.get("attention_bias", False)),
            o_proj_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
        )

    def to_hf(self) -> dict[str, Any]:
        """The `LlamaConfig` dict this spec reads back from (what export and orbax checkpoints write)."""
        fields = dataclasses.asdict(self)
        del fields["rope_theta"], fields["o_proj_bias"], fields["mrope_section"], fields["rope_llama3"]
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            **fields,
            "rope_parameters": self.rope_parameters(),
        }

    def rope_parameters(self) -> dict[str, Any]:
        if not self.rope_llama3:
            return {"rope_type": "default", "rope_theta": self.rope_theta}
        factor, low, high, original = self.rope_llama3
        return {
            "rope_type": "llama3",
            "rope_theta": self.rope_theta,
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": original,
        }


_LLAMA3_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def read_llama3_rope(rope: dict[str, Any], where: str) -> tuple[float, float, float, int] | tuple[()]:
    """Check `rope_parameters`: default RoPE (returns ()) or Llama-3's scaling (returns its four numbers)."""
    kind = require(where, "rope_parameters.rope_type", rope.get("rope_type"), ["default", "llama3"])
    allowed = {"rope_type", "rope_theta"} | (set(_LLAMA3_FIELDS) if kind == "llama3" else set())
    extra = sorted(set(rope) - allowed)
    if extra:
        raise UnsupportedConfigError(f"{where}: rope_parameters fields sgm_jax does not implement: {extra}")
    if kind == "default":
        return ()
    missing = [name for name in _LLAMA3_FIELDS if name not in rope]
    if missing:
        raise UnsupportedConfigError(f"{where}: rope_parameters (llama3) lacks {missing}")
    factor, low, high, original = (rope[name] for name in _LLAMA3_FIELDS)
    return float(factor), float(low), float(high), int(original)


def rope_inv_freq(head_dim: int, theta: float, llama3: tuple = ()) -> np.ndarray:
    """Default RoPE frequencies, rescaled by Llama-3's rule when `llama3` is given (transformers' float32 math)."""
    inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    if not llama3:
        return inv_freq
    factor, low, high, original = llama3
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) & ~(wavelen > original / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Positions counted from each row's first real token, as HF `generate` does for left padding."""
    positions = jnp.cumsum(attention_mask, axis=-1) - 1
    return jnp.where(attention_mask > 0, positions, 1).astype(jnp.int32)


def causal_padding_mask(attention_mask: jax.Array) -> jax.Array:
    """`[batch, 1, query, key]` booleans: a query sees earlier-or-equal keys that are real tokens."""
    t = attention_mask.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return causal[None, None] & (attention_mask[:, None, None, :] > 0)


def cached_attention_mask(token_mask: jax.Array, cache: KVCache) -> tuple[jax.Array, jax.Array]:
    """`[batch, 1, new, max_len]` booleans for new tokens written at `cache.length`, and the updated slot validity.

    A new token sees the real tokens in the slots up to its own.
    """
    valid = jax.lax.dynamic_update_slice(cache.valid, token_mask > 0, (0, cache.length))
    query_slots = cache.length + jnp.arange(token_mask.shape[1])
    causal = jnp.arange(cache.max_len)[None, :] <= query_slots[:, None]
    return causal[None, None] & valid[:, None, None, :], valid


def rope_cos_sin(
    positions: jax.Array, inv_freq: np.ndarray, dtype, mrope_section: tuple[int, ...] = ()
) -> tuple[jax.Array, jax.Array]:
    """HF's default RoPE tables `[batch, seq, head_dim]`, computed in float32 and cast to `dtype`.

    With `mrope_section` (Qwen2-VL), `positions` is `[3, batch, seq]` (t, h, w) and the first
    `mrope_section[0]` frequencies follow t, the next h, the rest w; `[batch, seq]` positions are the
    same on all three axes (text), where M-RoPE equals 1-D RoPE.
    """
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
    if mrope_section and positions.ndim == 3:
        axis = np.repeat(np.arange(len(mrope_section)), mrope_section)
        freqs = jnp.where(axis == 0, freqs[0], jnp.where(axis == 1, freqs[1], freqs[2]))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class LlamaAttention(Site):
    output_linear, input_linears = "o_proj", ("q_proj", "k_proj", "v_proj")

    def __init__(self, spec: LlamaSpec, *, dtype, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads = spec.num_attention_heads, spec.num_key_value_heads
        self.head_dim = spec.head_dim
        d, bias = spec.hidden_size, spec.attention_bias
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        layer = dict(dtype=dtype, rngs=rngs)
        self.q_proj = Linear(d, q, use_bias=bias, axes=("embed", "heads"), **layer)
        self.k_proj = Linear(d, kv, use_bias=bias, axes=("embed", "kv_heads"), **layer)
        self.v_proj = Linear(d, kv, use_bias=bias, axes=("embed", "kv_heads"), **layer)
        self.o_proj = Linear(q, d, use_bias=spec.o_proj_bias, axes=("heads", "embed"), **layer)

    def forward(
        self, x: jax.Array, context: DecoderContext, entry: LayerKV | None = None
    ) -> tuple[jax.Array, LayerKV | None]:
        """With a cache `entry`, the new keys and values are written into it at `context.write_at` and the
        queries attend over all its slots; the updated entry comes back."""
        b, t, _ = x.shape
        cos, sin = context.rope[CAUSAL]
        q = _rotate(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim), cos, sin)
        k = _rotate(self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if entry is not None:
            entry = entry.write(k, v, context.write_at)
            k, v = entry.keys, entry.values
        out = attend(q, k, v, mask=context.masks[CAUSAL], scale=self.head_dim**-0.5)
        if entry is not None:  # the layer's cache write done before the layer's output is: new keys die here
            out, entry = jax.lax.optimization_barrier((out, entry))
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), entry


class LlamaMLP(Site):
    """`down(act(gate(x)) * up(x))`: Llama's MLP, and Qwen2.5-VL's vision MLP (with biases)."""

    output_linear, input_linears, activation_feeds = "down_proj", ("gate_proj", "up_proj"), "down_proj"

    def __init__(self, d: int, f: int, *, act: str, bias: bool, dtype, rngs: nnx.Rngs):
        self.gate_proj = Linear(d, f, use_bias=bias, axes=("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.up_proj = Linear(d, f, use_bias=bias, axes=("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.down_proj = Linear(f, d, use_bias=bias, axes=("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.act_fn = Activation(act, f)

    def forward(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(Site):
    def __init__(self, spec: LlamaSpec, *, dtype, rngs: nnx.Rngs):
        self.self_attn = LlamaAttention(spec, dtype=dtype, rngs=rngs)
        self.mlp = LlamaMLP(
            spec.hidden_size,
            spec.intermediate_size,
            act=spec.hidden_act,
            bias=spec.mlp_bias,
            dtype=dtype,
            rngs=rngs,
        )
        self.input_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps, dtype=dtype, rngs=rngs)

    def site_widths(self) -> tuple[int, int]:
        return self.input_layernorm.site_widths()

    def forward(
        self, x: jax.Array, context: DecoderContext, entry: LayerKV | None = None
    ) -> tuple[jax.Array, LayerKV | None]:
        attended, entry = self.self_attn(self.input_layernorm(x), context, entry)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), entry


class LlamaModel(nnx.Module):
    """The decoder stack without the LM head (HF `LlamaModel`); its one call runs with or without a cache."""

    def __init__(self, spec: LlamaSpec, *, dtype, rngs: nnx.Rngs):
        self.spec = spec
        self.embed_tokens = Embedding(
            spec.vocab_size, spec.hidden_size, axes=("vocab", "embed"), dtype=dtype, rngs=rngs
        )
        self.layers = nnx.List([LlamaDecoderLayer(spec, dtype=dtype, rngs=rngs) for _ in range(spec.num_hidden_layers)])
        self.norm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps, dtype=dtype, rngs=rngs)

    def rope(self, positions: jax.Array, dtype) -> dict[str, tuple[jax.Array, jax.Array]]:
        spec = self.spec
        return {CAUSAL: rope_cos_sin(positions, spec.inv_freq(), dtype, spec.mrope_section)}

    def __call__(
        self,
        inputs_embeds: jax.Array,
        token_mask: jax.Array,
        *,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        rope_deltas: jax.Array | None = None,
        extras: Any = None,
    ) -> tuple[jax.Array, list[jax.Array], KVCache | None]:
        """The final normed hidden state, the residual stream entering each layer (plus the last output), and
        with `cache` the updated cache, the new tokens written after those in it.

        `token_mask` `[batch, new]` is 1 for real tokens. Positions count each row's real tokens (left padding),
        after those in `cache`, unless given (M-RoPE models pass `[3, batch, seq]`); a prefill's `rope_deltas`
        `[batch]` then shift where later tokens go. `extras` are the family's per-layer inputs (`decoder.py`).
        """
        if cache is None:
            positions = positions_from_mask(token_mask) if positions is None else positions
            masks, write_at, entries = {CAUSAL: causal_padding_mask(token_mask)}, None, None
        else:
            if positions is None:
                positions = cache.next_position[:, None] + positions_from_mask(token_mask)
            mask, valid = cached_attention_mask(token_mask, cache)
            masks, write_at, entries = {CAUSAL: mask}, cache.length, cache.layers
        context = DecoderContext(self.rope(positions, inputs_embeds.dtype), masks, write_at, extras)
        h, stream, entries = run_layers(self.layers, inputs_embeds, context, entries, self.after_layer(extras))
        if cache is not None:
            cache = KVCache(
                layers=entries,
                valid=valid,
                length=cache.length + token_mask.shape[1],
                next_position=cache.next_position
                + token_mask.sum(-1, dtype=jnp.int32)
                + (0 if rope_deltas is None else rope_deltas.astype(jnp.int32)),
            )
        return self.norm(h), stream, cache

    def after_layer(self, extras: Any) -> Callable[[int, jax.Array], jax.Array] | None:
        """What a family adds to the stream after each layer (`decoder.py`); none here."""
        return None

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache with room for `max_len` tokens per row, in the compute dtype."""
        return KVCache.empty(
            tuple(self.cache_entry(layer, batch, max_len) for layer in self.layers), batch=batch, max_len=max_len
        )

    def cache_entry(self, layer: nnx.Module, batch: int, max_len: int) -> Any:
        """A layer's empty cache entry (a family with other layers says what they keep)."""
        spec = self.spec
        return self_attention_entry(
            batch=batch,
            max_len=max_len,
            kv_heads=spec.num_key_value_heads,
            head_dim=spec.head_dim,
            dtype=self.embed_tokens.embedding.dtype,
        )


class LlamaForCausalLM(CausalLM):
    """Text-only Llama with its LM head (tied to the embeddings when the config says so)."""

    model_type, spec_class, decoder_layers = "llama", LlamaSpec, "model.layers"
    backbone_class = LlamaModel

    @property
    def decoder(self) -> LlamaModel:
        return self.model
