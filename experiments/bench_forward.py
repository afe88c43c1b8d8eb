"""Forward-pass benchmark: sgm_jax's jitted LLaVA forward vs transformers (PyTorch, default sdpa attention).

Same random weights, same inputs, one process, side by side; also the cost of the public
`model(...)` call against a bare `jax.jit` over the split state, both fed the same host
arrays (the call checks the image tokens and flattens the model). The shape is a mid-size
LLaVA (~30M parameters: CLIP 256 wide x 4 layers at 112 px / patch 14, Llama 512 wide
x 6 layers, 8 heads, MLP 1408, vocab 8000) on a batch of 4 x 256 tokens (64 of them
image tokens). Runs unchanged on a GPU: torch uses CUDA when it has it, jax its
default backend.

    python experiments/bench_forward.py [--repeats 20] [--batch 4] [--length 256] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
import torch
from flax import nnx
from transformers import LlavaForConditionalGeneration

import sgm_jax
from shapes import make_inputs, mid_size_config
from timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per side (median is reported)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256, help="tokens per row, image tokens included")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()

    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        LlavaForConditionalGeneration(mid_size_config()).save_pretrained(directory)
        hf = LlavaForConditionalGeneration.from_pretrained(directory, dtype=torch_dtype).to(torch_device).eval()
        model, _ = sgm_jax.load_model(directory, dtype=args.dtype)
    n_params = sum(p.numel() for p in hf.parameters())
    n_image = model.spec.features_per_image
    ids, mask, pixels = make_inputs(args.batch, args.length, n_image)

    graphdef, state = nnx.split(model)

    @jax.jit
    def logits_fn(state, ids, pixels, mask):
        return nnx.merge(graphdef, state).forward(ids, pixel_values=pixels, attention_mask=mask)["logits"]

    t_inputs = dict(
        input_ids=torch.tensor(ids, device=torch_device),
        attention_mask=torch.tensor(mask, device=torch_device),
        pixel_values=torch.tensor(pixels, device=torch_device, dtype=torch_dtype),
    )

    def run_torch():
        with torch.no_grad():
            out = hf(**t_inputs).logits
        if torch_device == "cuda":
            torch.cuda.synchronize()
        return out

    run_jax = lambda: logits_fn(state, ids, pixels, mask).block_until_ready()
    run_call = lambda: model(ids, pixel_values=pixels, attention_mask=mask).block_until_ready()

    start = time.perf_counter()
    run_jax()
    compile_s = time.perf_counter() - start
    diff = float(np.abs(np.asarray(run_jax(), np.float32) - run_torch().float().cpu().numpy()).max())

    t_torch = median_seconds(run_torch, args.repeats)
    t_jax = median_seconds(run_jax, args.repeats)
    t_call = median_seconds(run_call, args.repeats)
    tokens = args.batch * args.length
    print(
        f"mid-size LLaVA, {n_params / 1e6:.1f}M parameters, batch {args.batch} x {args.length} tokens "
        f"({n_image} image tokens per row), {args.dtype}"
    )
    print(
        f"devices: torch {torch_device} ({torch.get_num_threads()} threads), jax {jax.devices()[0].platform} "
        f"({jax.devices()[0].device_kind})"
    )
    print(f"max |logits difference|: {diff:.2e}; jax compile: {compile_s:.2f} s")
    print(f"transformers (sdpa)          : {t_torch * 1e3:8.2f} ms  ({tokens / t_torch:9.0f} tokens/s)")
    print(f"sgm_jax jit over split state : {t_jax * 1e3:8.2f} ms  ({tokens / t_jax:9.0f} tokens/s)")
    print(f"sgm_jax model(...) call      : {t_call * 1e3:8.2f} ms")
    print(f"speed-up vs transformers: {t_torch / t_jax:.2f}x (jit), {t_torch / t_call:.2f}x (model call)")
    print(f"model(...) call / jit over split state: {t_call / t_jax:.3f}")


if __name__ == "__main__":
    main()
