"""Forward-pass benchmark: sgm_jax's jitted forward vs transformers (PyTorch, default sdpa attention).

Same random weights, same inputs, one process, side by side; also the cost of the public
`model(...)` call against a bare `jax.jit` over the split state, both fed the same host
arrays (the call checks the image tokens, prepares the family's host inputs and flattens the
model; the bare jit gets the prepared inputs). The mid-size shapes of `shapes.py` (~30M
parameters each): `--family llava` (CLIP 256 wide x 4 layers at 112 px, Llama 512 x 6; 4 x 256
tokens, 64 of them image tokens), `--family llava-next` (the same towers over 5 tiles of one
224 px image per row; 4 x 512 tokens, 336 image tokens), `--family mllama` (a 256-wide tiled
vision model over 4 tiles feeding a Llama-3 decoder through 2 cross-attention layers; 4 x 256
tokens) and `--family qwen2.5-vl` (a 256-wide
4-block windowed vision tower on one 224 px image per row, Qwen2 512 x 6 with GQA and M-RoPE;
4 x 256 tokens, 64 image tokens). Runs unchanged on a GPU: torch uses CUDA when it has it, jax
its default backend.

    python experiments/bench_forward.py [--family llava|llava-next|mllama|qwen2.5-vl] [--repeats 20] [--batch 4]
        [--length TOKENS] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
import torch
from flax import nnx

import sgm_jax
from shapes import SHAPES
from timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(SHAPES), default="llava", help="the mid-size shape to run")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per side (median is reported)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, help="tokens per row, image tokens included (default: the shape's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()

    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, args.dtype)
    shape = SHAPES[args.family]
    args.length = args.length or shape.length
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        shape.model_class(shape.config()).save_pretrained(directory)
        hf = shape.model_class.from_pretrained(directory, dtype=torch_dtype).to(torch_device).eval()
        model, _ = sgm_jax.load_model(directory, dtype=args.dtype)
    n_params = sum(p.numel() for p in hf.parameters())
    inputs = shape.inputs(args.batch, args.length)
    ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
    prepared = model.prepare_inputs(ids, mask, inputs)

    graphdef, state = nnx.split(model)

    @jax.jit
    def logits_fn(state, ids, mask, prepared):
        return nnx.merge(graphdef, state).forward(ids, attention_mask=mask, **prepared).logits

    t_inputs = {
        name: torch.tensor(value, device=torch_device, dtype=torch_dtype if value.dtype == np.float32 else None)
        for name, value in dict(inputs, input_ids=ids, attention_mask=mask).items()
    }

    def run_torch():
        with torch.no_grad():
            out = hf(**t_inputs).logits
        if torch_device == "cuda":
            torch.cuda.synchronize()
        return out

    run_jax = lambda: logits_fn(state, ids, mask, prepared).block_until_ready()
    run_call = lambda: model(ids, attention_mask=mask, **inputs).block_until_ready()

    start = time.perf_counter()
    run_jax()
    compile_s = time.perf_counter() - start
    diff = float(np.abs(np.asarray(run_jax(), np.float32) - run_torch().float().cpu().numpy()).max())

    t_torch = median_seconds(run_torch, args.repeats)
    t_jax = median_seconds(run_jax, args.repeats)
    t_call = median_seconds(run_call, args.repeats)
    tokens = args.batch * args.length
    print(
        f"{shape.description}, {n_params / 1e6:.1f}M parameters, batch {args.batch} x {args.length} tokens, "
        f"{args.dtype}"
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
