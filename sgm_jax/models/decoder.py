"""The one decoder loop, with or without a cache: every family's language model runs its layers through here.

A decoder layer is `layer(x, context, entry) -> (x, entry)`, as gemma's `Block` and MaxText's layers are:
`context` is what every layer of one call reads (RoPE tables, the attention mask, where new keys go, and a
family's own inputs), `entry` is the layer's own part of the `KVCache` (None when the call keeps no cache).
A plain forward and a cached prefill or decode step are the same loop, so a gate or an edit on a layer acts
identically in both.

Extension points, so a new family adds layers and inputs, not a second loop:
- **Masks per layer.** `context.masks` maps a mask kind to its mask; a layer reads the kind it attends with
  (`attention_kind`, "causal" by default). Gemma 3 builds "sliding" (causal within `sliding_window` and
  bidirectional inside each image's token span, from `token_type_ids`) and "full" masks once per call, and
  its local and global layers, declared by `layer_types`, each pick theirs; its two RoPE bases are two
  entries of `context.rope` picked the same way. A sliding layer's cache entry can keep the whole sequence
  and mask it, exact to transformers' decode, before any ring buffer is worth its complexity.
- **Per-layer inputs.** `context.extras` carries what a family adds between layers: Mllama's cross-attention
  states (its cross layers read them, keep the projected image keys as their cache entry, and are skipped
  when no image is anywhere).
- **After-layer hook.** `run_layers(..., after_layer=f)` calls `f(i, x)` on each layer's output before the
  next layer and before the residual stream records it; a language model gives `f` from its call's extras
  (`LlamaModel.after_layer`). Qwen3-VL's DeepStack adds the visual features of vision layer k to the
  image-token positions after decoder layer k (`x.at[image positions].add(features)`), so capture and
  attribution see the stream with them, as transformers' hidden states do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax

CAUSAL = "causal"


@dataclasses.dataclass(frozen=True)
class DecoderContext:
    """What every layer of one decoder call reads."""

    rope: dict[str, tuple[jax.Array, jax.Array]]
    """RoPE `(cos, sin)` tables `[batch, new, head_dim]` by kind (one kind, CAUSAL, for every family so far)."""
    masks: dict[str, jax.Array]
    """Attention masks `[batch, 1, new, keys]` (bool) by kind."""
    write_at: jax.Array | None = None
    """The cache slot of the first new token (int32 scalar); None for a call without a cache."""
    extras: Any = None
    """A family's own per-call inputs (Mllama: the images' cross-attention states), or None."""


def run_layers(
    layers: Sequence[Any],
    x: jax.Array,
    context: DecoderContext,
    entries: Sequence[Any] | None = None,
    after_layer: Callable[[int, jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, list[jax.Array], tuple[Any, ...] | None]:
    """Every layer in order: the last output, the residual stream (the input of each layer, then the last
    output), and the layers' updated cache entries (None without `entries`)."""
    stream, updated = [x], []
    for i, layer in enumerate(layers):
        x, entry = layer(x, context, None if entries is None else entries[i])
        if after_layer is not None:
            x = after_layer(i, x)
        stream.append(x)
        updated.append(entry)
    return x, stream, None if entries is None else tuple(updated)
