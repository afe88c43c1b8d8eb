"""Attention benchmark: the einsum-softmax form the ports copied (HF's eager attention) vs
`sgm_jax.models.attention.attend`, which is `jax.nn.dot_product_attention(implementation="xla")` for many
queries and the einsum form for a one-query decode step (where it measured faster).

Both sides jitted, same random inputs, timed in turns (medians), in float32 and bfloat16, on
decoder-like shapes (batch 4, 8 query heads over 2 key/value heads, head dim 64: a causal prefill
of 256 and of 1024 tokens with padding, and a decode step of 1 query over 1024 cached keys) and
vision-like shapes (CLIP: 4 images x 577 patches, 16 heads of 64, no mask; Mllama: 4 tiles of 264
positions, 7 of them padding, 16 heads of 80, an additive bias; Qwen2-VL: 1024 packed rows in 4
image segments, 16 heads of 80, a segment mask). Prints each median, attend's time as a multiple of
the einsum's (below 1: attend is faster), and the largest difference between the outputs.

    python experiments/bench_attention.py [--repeats 10]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from sgm_jax.models.attention import attend, einsum_attend
from timing import interleaved_medians


def _causal(b: int, t: int, s: int) -> np.ndarray:
    """`[b, 1, t, s]`: the last `t` of `s` slots are the queries; each row pads its first `4 * row` keys."""
    causal = np.arange(s)[None, :] <= (s - t + np.arange(t))[:, None]
    real = np.arange(s)[None, :] >= 4 * np.arange(b)[:, None]
    return causal[None, None] & real[:, None, None, :]


def cases() -> dict[str, dict]:
    """name -> `(batch, query, heads, kv_heads, head_dim, keys)` and the boolean mask or the bias pattern."""
    segments = np.repeat(np.arange(4), 256)
    pad = np.tile(np.arange(264) >= 257, 4)  # Mllama pads each tile's 257 positions to a multiple of 8
    return {
        "prefill 256": dict(shape=(4, 256, 8, 2, 64, 256), mask=_causal(4, 256, 256)),
        "prefill 1024": dict(shape=(4, 1024, 8, 2, 64, 1024), mask=_causal(4, 1024, 1024)),
        "decode 1/1024": dict(shape=(4, 1, 8, 2, 64, 1024), mask=_causal(4, 1, 1024)),
        "CLIP 577": dict(shape=(4, 577, 16, 16, 64, 577)),
        "Mllama 4 tiles 1056": dict(shape=(1, 1056, 16, 16, 80, 1056), bias=(pad[:, None] & pad[None, :])[None, None]),
        "Qwen2-VL packed 1024": dict(
            shape=(1, 1024, 16, 16, 80, 1024), mask=(segments[:, None] == segments[None, :])[None, None]
        ),
    }


def time_case(case: dict, dtype, repeats: int) -> tuple[float, float, float]:
    """Medians of the einsum form and of attend, and the largest difference between their outputs."""
    b, t, heads, kv_heads, head_dim, s = case["shape"]
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, t, heads, head_dim)), dtype)
    k, v = (jnp.asarray(rng.standard_normal((b, s, kv_heads, head_dim)), dtype) for _ in range(2))
    mask = None if "mask" not in case else jnp.asarray(case["mask"])
    bias = None if "bias" not in case else jnp.where(case["bias"], jnp.finfo(dtype).min, 0.0).astype(dtype)
    scale = head_dim**-0.5
    einsum = jax.jit(lambda q, k, v, m, a: einsum_attend(q, k, v, mask=m, bias=a, scale=scale))
    ours = jax.jit(lambda q, k, v, m, a: attend(q, k, v, mask=m, bias=a, scale=scale))
    inputs = (q, k, v, mask, bias)
    times = interleaved_medians(
        {"einsum": lambda: einsum(*inputs).block_until_ready(), "attend": lambda: ours(*inputs).block_until_ready()},
        repeats,
    )
    diff = jnp.max(jnp.abs(einsum(*inputs).astype(jnp.float32) - ours(*inputs).astype(jnp.float32)))
    return times["einsum"], times["attend"], float(diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per side (median reported)")
    args = parser.parse_args()

    print(f"{'case':22s} {'dtype':9s} {'einsum ms':>10s} {'attend ms':>10s} {'attend/einsum':>14s} {'max |diff|':>11s}")
    for name, case in cases().items():
        for dtype in (jnp.float32, jnp.bfloat16):
            t_einsum, t_attend, diff = time_case(case, dtype, args.repeats)
            print(
                f"{name:22s} {jnp.dtype(dtype).name:9s} {t_einsum * 1e3:10.2f} {t_attend * 1e3:10.2f} "
                f"{t_attend / t_einsum:13.2f}x {diff:11.2e}"
            )


if __name__ == "__main__":
    main()
