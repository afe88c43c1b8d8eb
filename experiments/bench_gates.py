"""Gate benchmark: what an SGM intervention costs in the forward pass, and what a vmapped sweep saves.

On the mid-size LLaVA shape (shapes.py), batch 4 x 256 tokens, float32, timed in turns so
a load change on a shared machine hits both sides alike:
1. the jitted forward without gates vs with an SGM-style intervention (random alphas in
   [0, 1.4] on the gate/up/down MLP projections of every decoder layer): overhead in %;
2. K interventions on one batch, each way as a user writes it: `sgm_jax.intervene` + the
   gated model's call, K times (one compile, new alphas each time) vs one `sgm_jax.sweep`
   call (a jax.vmap over the gate state): seconds per intervention. Each returns the
   last position's logits, what a sweep over a next-token score needs.

    python experiments/bench_gates.py [--repeats 20] [--sweep 8]
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import numpy as np
import torch
from flax import nnx
from transformers import LlavaForConditionalGeneration

import sgm_jax
from sgm_jax.interventions import GateStack, Intervention, swept_sites
from sgm_jax.responses.sites import default_sites, resolve
from shapes import make_inputs, mid_size_config
from timing import interleaved_medians


def sgm_like(model, seed: int) -> Intervention:
    rng = np.random.default_rng(seed)
    refs = resolve(model, default_sites(model))
    return Intervention({r.name: rng.uniform(0.0, 1.4, r.width).astype(np.float32) for r in refs}, {"seed": seed})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (median reported)")
    parser.add_argument("--sweep", type=int, default=8, help="K, the number of interventions in the sweep")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        LlavaForConditionalGeneration(mid_size_config()).save_pretrained(directory)
        model, _ = sgm_jax.load_model(directory)
    ids, mask, pixels = make_inputs(4, 256, model.spec.features_per_image)

    def forward(m):
        return m.forward(ids, pixel_values=pixels, attention_mask=mask).logits

    graphdef_plain, plain_state = nnx.split(model)
    plain_fn = jax.jit(lambda state: forward(nnx.merge(graphdef_plain, state)))
    ivs = [sgm_like(model, seed) for seed in range(args.sweep)]
    stack = GateStack(model, swept_sites(model, ivs))
    graphdef, gates, rest = stack.graphdef, stack.state(ivs), stack.rest
    gated_fn = jax.jit(lambda g, r: forward(nnx.merge(graphdef, g, r)))
    one = [jax.tree.map(lambda x, k=k: x[k], gates) for k in range(args.sweep)]
    forward_times = interleaved_medians(
        {
            "plain": lambda: plain_fn(plain_state).block_until_ready(),
            "gated": lambda: gated_fn(one[0], rest).block_until_ready(),
        },
        args.repeats,
    )
    gated_fn(one[1], rest).block_until_ready()
    assert gated_fn._cache_size() == 1, "new alphas recompiled"

    def one_by_one():
        for iv in ivs:
            sgm_jax.intervene(model, iv)(ids, pixel_values=pixels, attention_mask=mask)[:, -1].block_until_ready()

    def last_logits(m):
        return forward(m)[:, -1]

    sweep_times = interleaved_medians(
        {"loop": one_by_one, "sweep": lambda: sgm_jax.sweep(model, ivs, last_logits)},
        max(3, args.repeats // 4),
    )
    t_plain, t_gated = forward_times["plain"], forward_times["gated"]
    t_loop, t_sweep = sweep_times["loop"], sweep_times["sweep"]
    n_gated = sum(len(a) for a in ivs[0].alphas.values())
    print(
        f"mid-size LLaVA, batch 4 x 256 tokens, float32; intervention on {len(ivs[0].alphas)} sites ({n_gated} neurons)"
    )
    print(f"forward without gates: {t_plain * 1e3:7.2f} ms")
    print(f"forward with gates   : {t_gated * 1e3:7.2f} ms   overhead {100 * (t_gated / t_plain - 1):+.1f}%")
    print(f"{args.sweep} interventions one by one : {t_loop:6.3f} s  ({t_loop / args.sweep * 1e3:7.2f} ms each)")
    print(
        f"{args.sweep} interventions, one sweep  : {t_sweep:6.3f} s  ({t_sweep / args.sweep * 1e3:7.2f} ms each, "
        f"{t_loop / t_sweep:.2f}x)"
    )


if __name__ == "__main__":
    main()
