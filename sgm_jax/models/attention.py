"""The one attention function that every tower and decoder calls."""

from __future__ import annotations

import jax


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
) -> jax.Array:
    """`softmax(q k^T * scale + bias, masked) v` per head.

    `q` `[batch, query, heads, head_dim]`, `k`/`v` `[batch, key, kv_heads, head_dim]` with `heads` a multiple of
    `kv_heads` (grouped queries share a key head without repeating it); `bias` (additive) and `mask` (boolean,
    True = attend) are `[batch, 1 or heads, query, key]`. Returns `[batch, query, heads, head_dim]`.

    It is `jax.nn.dot_product_attention`'s XLA form: on CPU it takes 0.66-0.92x the time of the einsum-softmax
    blocks the ports used to copy (HF's eager attention) at prefill and in the towers, with float32 outputs
    identical to theirs; only a one-query decode step is slower, by about 10% (0.05 ms over 1024 keys); see
    `experiments/bench_attention.py`. In bfloat16 it keeps the scores in float32, where HF's eager path rounds
    them to bfloat16 first. A fused kernel (`implementation="cudnn"`, a Pallas flash kernel) is a change here only.
    """
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="xla")
