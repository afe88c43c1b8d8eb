"""The one attention function that every tower and decoder calls."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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

    Many queries go through `jax.nn.dot_product_attention`'s XLA form: on CPU it takes 0.66-0.92x the time of the
    einsum-softmax blocks the ports used to copy (HF's eager attention) at prefill and in the towers, float32
    outputs identical. A one-query decode step, where that form was about 10% slower, keeps the einsum form
    (`experiments/bench_attention.py` measures both). In bfloat16 the first keeps the scores in float32, the
    second rounds them to bfloat16 as HF's eager path does. A fused kernel (`implementation="cudnn"`, a Pallas
    flash kernel) is a change here only.
    """
    if q.shape[1] == 1:
        return einsum_attend(q, k, v, scale=scale, mask=mask, bias=bias)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="xla")


def einsum_attend(q, k, v, *, scale: float, mask=None, bias=None) -> jax.Array:
    """The einsum form (HF's eager attention): grouped scores in the inputs' dtype, softmax in float32, the
    probabilities cast back."""
    b, t, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, heads // kv_heads, head_dim)
    scores = (jnp.einsum("bqkgh,bskh->bkgqs", q, k) * scale).reshape(b, heads, t, -1)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskh->bqkgh", probs.reshape(b, kv_heads, heads // kv_heads, t, -1), v)
    return out.reshape(b, t, heads, head_dim)
