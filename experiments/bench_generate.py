"""Generation benchmark with an SGM-style intervention: `sgm_jax.generate` vs transformers `generate` with hooks.

Same random weights, same inputs, one process, side by side. The shape is one of the
mid-size shapes of `shapes.py` (`--family llava` or `qwen2.5-vl`, where decode steps carry
M-RoPE positions at `n_real + rope_delta`) on a batch of 4 left-padded prompts of 256 tokens
(64 image tokens each), 64 new tokens, greedy. The intervention multiplies the outputs of the gate, up
and down MLP projections of every decoder layer by random alphas in [0, 1.4]: in
sgm_jax as gates in the module tree (an `Intervention` through `sgm_jax.intervene`), in
transformers the ml-aura way, as forward hooks multiplying the same module outputs.

Measured: the median wall time of a whole `generate` call (prefill + decode), with the
jit compile of the first sgm_jax call reported on its own; new tokens per second; the
speed-up; and whether both sides produce the same tokens.

    python experiments/bench_generate.py [--family llava|llava-next|mllama|qwen2.5-vl] [--repeats 5] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
import torch

import sgm_jax
from shapes import SHAPES
from timing import median_seconds

MLP_SITES = ("gate_proj", "up_proj", "down_proj")


def random_intervention(model, seed: int) -> sgm_jax.Intervention:
    """Alphas in [0, 1.4] on the gate/up/down projections of every decoder layer, as SGM gates them."""
    rng = np.random.default_rng(seed)
    widths = sgm_jax.list_sites(model)
    sites = [
        f"model.language_model.layers.{i}.mlp.{name}"
        for i in range(model.spec.text.num_hidden_layers)
        for name in MLP_SITES
    ]
    return sgm_jax.Intervention({s: rng.uniform(0.0, 1.4, widths[s]) for s in sites}, {"method": "random"})


def hook_intervention(hf: torch.nn.Module, iv: sgm_jax.Intervention, device: str) -> list:
    """ml-aura-style: a forward hook per module multiplying its output by alpha."""
    modules = dict(hf.named_modules())
    handles = []
    for site, alpha in iv.alphas.items():
        alpha = torch.tensor(alpha, device=device)
        handles.append(modules[site].register_forward_hook(lambda m, args, out, a=alpha: out * a))
    return handles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(SHAPES), default="llava", help="the mid-size shape to run")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side (median is reported)")
    parser.add_argument("--batch", type=int, default=4, help="prompts per call")
    parser.add_argument("--length", type=int, help="tokens per prompt, image tokens included (default: the shape's)")
    parser.add_argument(
        "--min-length", type=int, help="left-pad: real prompt lengths vary in [min-length, length] (default: all full)"
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    args = parser.parse_args()

    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = SHAPES[args.family]
    args.length = args.length or shape.length
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        shape.model_class(shape.config()).save_pretrained(directory)
        hf = shape.model_class.from_pretrained(directory, dtype=torch.float32).to(torch_device).eval()
        model, _ = sgm_jax.load_model(directory)
    inputs = shape.inputs(args.batch, args.length, min_length=args.min_length)
    ids, mask = inputs["input_ids"], inputs.pop("attention_mask")
    iv = random_intervention(model, 0)
    gated = sgm_jax.intervene(model, iv)
    hook_intervention(hf, iv, torch_device)
    new = args.new_tokens

    t_inputs = {
        name: torch.tensor(value, device=torch_device) for name, value in dict(inputs, attention_mask=mask).items()
    }
    inputs.pop("input_ids")

    def run_torch():
        with torch.no_grad():
            out = hf.generate(**t_inputs, do_sample=False, min_new_tokens=new, max_new_tokens=new, pad_token_id=0)
        if torch_device == "cuda":
            torch.cuda.synchronize()
        return out[:, ids.shape[1] :].cpu().numpy()

    def run_jax():
        return sgm_jax.generate(
            gated, ids, attention_mask=mask, max_new_tokens=new, temperature=0.0, eos_token_id=None, **inputs
        )

    start = time.perf_counter()
    ours = run_jax()
    first_s = time.perf_counter() - start
    theirs = run_torch()
    t_torch = median_seconds(run_torch, args.repeats, warmup=1)
    t_jax = median_seconds(run_jax, args.repeats, warmup=1)

    same_rows = int((ours == theirs).all(1).sum())
    tokens = args.batch * new
    print(
        f"{shape.description}, batch {args.batch} x {args.length}-token prompts "
        f"(real lengths {mask.sum(1).tolist()}), {new} new tokens, greedy, float32"
    )
    print(
        f"intervention: {len(iv.sites)} sites (gate/up/down_proj of every decoder layer), "
        f"{iv.num_changed()} neurons gated"
    )
    print(
        f"devices: torch {torch_device} ({torch.get_num_threads()} threads), jax {jax.devices()[0].platform} "
        f"({jax.devices()[0].device_kind})"
    )
    print(f"same tokens: {int((ours == theirs).sum())}/{ours.size} ({same_rows}/{args.batch} rows identical)")
    print(f"sgm_jax compile: {first_s - t_jax:.2f} s (first call {first_s:.2f} s)")
    print(f"transformers generate + hooks : {t_torch * 1e3:9.1f} ms  ({tokens / t_torch:7.1f} new tokens/s)")
    print(f"sgm_jax generate (gates)      : {t_jax * 1e3:9.1f} ms  ({tokens / t_jax:7.1f} new tokens/s)")
    print(f"speed-up vs transformers: {t_torch / t_jax:.2f}x")


if __name__ == "__main__":
    main()
