"""Accelerator benchmark at LLaVA-1.5-7B shapes: prefill MFU, pooled collection, gated decoding's bandwidth, sweeps.

A LLaVA with Vicuna-7B's decoder (4096 wide, MLP 11008, 32 layers, 32 heads, vocab 32064) and CLIP
ViT-L/14-336's tower (1024 wide, 24 layers, 576 image tokens per image), random bfloat16 weights drawn on the
device (nothing is downloaded, nothing passes through torch). One process measures, as medians:

1. prefill: the jitted forward over a batch of prompts (tokens/s), and its MFU: model FLOPs (2 x matmul
   parameters x tokens for the towers, decoder and LM head, plus 4 x layers x width x length^2 per row of
   attention, as computed: full score matrices) over the devices' peak dense bfloat16 FLOP/s;
2. pooled collection (`sgm_jax.collect_responses`, what `sgm-jax collect` runs per batch) at the SGM default
   sites (gate/up/down projections of every decoder layer, mean-pooled) in samples/s;
3. KV-cached greedy generation (`sgm_jax.generate`) with an SGM-like intervention on those sites, in new
   tokens/s, and the bandwidth a decode step achieves: the decoder's weights (the embedding table aside) plus
   the whole KV cache (every slot is attended, masked or not) read per step, over the step time (generation
   minus one prefill forward, over the steps), against the devices' peak HBM bandwidth;
4. a sweep (`sgm_jax.sweep`) of K interventions over the last-position logits of one batch, in settings/s;
5. each program's compile (its first call beyond the median) and, as a second run would meet them, its first call
   again after the in-memory programs are dropped: loaded from a fresh persistent compile cache (how many programs
   were compiled, how many loaded).

On an accelerator it runs the 7B shapes, sized to finish in under 8 minutes on one H100 or H200 with its
compiles (a 7B program compiles in 4-14 s on XLA:CPU but 40-70 s on XLA:TPU, `bench_compile.py`, so repeats stay
few); on CPU it runs small shapes (256
wide, 4 layers, vocab 1000) in under a minute. With several local devices (a TPU VM) the weights are sharded
over them (fsdp), as `--mesh 1,N,1` would, and the peaks are the sum of theirs.

    python experiments/bench_accelerator.py [--shape 7b|small] [--batch B] [--prompt-len T] [--new-tokens N]
        [--sweep-k K] [--repeats R] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

import sgm_jax
from sgm_jax.responses.sites import resolve
from sgm_jax.runtime import compile_cache
from sgm_jax.runtime.buckets import bucket_length
from sgm_jax.runtime.compiles import count_compiles
from sgm_jax.weights import recipes, sharding
from timing import median_seconds

# Peak dense bfloat16 FLOP/s and HBM bytes/s of one device, by a fragment of `device_kind` (first match wins).
PEAKS = (
    ("h100 pcie", 756e12, 2.0e12),
    ("h200", 989e12, 4.8e12),
    ("h100", 989e12, 3.35e12),
    ("a100", 312e12, 2.0e12),  # the 80 GB part's bandwidth
    ("tpu v4", 275e12, 1.2e12),
    ("tpu v5 lite", 197e12, 0.82e12),
    ("tpu v5e", 197e12, 0.82e12),
    ("tpu v5p", 459e12, 2.76e12),
    ("tpu v5", 459e12, 2.76e12),
    ("tpu v6 lite", 918e12, 1.64e12),
    ("tpu v6e", 918e12, 1.64e12),
)

SGM_SITES = recipes.load_recipe("llava-1.5-7b").default_sites


@dataclasses.dataclass(frozen=True)
class Shape:
    description: str
    config: LlavaConfig
    batch: int
    prompt_len: int
    new_tokens: int
    repeats: int


def llava_shape(name: str) -> Shape:
    if name == "7b":
        vision = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
        )
        text = LlamaConfig(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            vocab_size=32064,
            rms_norm_eps=1e-5,
        )
        config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000)
        return Shape("LLaVA-1.5-7B shapes (CLIP ViT-L/14-336 + Vicuna-7B)", config, 8, 640, 128, 3)
    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14
    )
    text = LlamaConfig(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, vocab_size=1000
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=999)
    return Shape("small LLaVA (CLIP 64 x 2 layers at 56 px + Llama 256 x 4 layers)", config, 4, 64, 16, 3)


INIT_STD = 0.02


@functools.cache
def _filler(shape: tuple[int, ...], dtype, kind: str, placement) -> Callable[[jax.Array], jax.Array]:
    """One parameter's draw, jitted once per shape, kind and placement."""

    def fill(key):
        if kind == "ones":
            return jnp.ones(shape, dtype)
        if kind == "zeros":
            return jnp.zeros(shape, dtype)
        return (INIT_STD * jax.random.normal(key, shape, dtype)).astype(dtype)

    return jax.jit(fill) if placement is None else jax.jit(fill, out_shardings=placement)


def random_model(config: dict, mesh) -> nnx.Module:
    """The model as `build_model` initialises it (normal 0.02 kernels and tables, unit norm scales, zero biases),
    drawn in bfloat16 one parameter at a time straight onto the device (or its shards of `mesh`). `build_model`
    under one jit would draw float32 copies (20 GB of temporaries at 7B) in a program that takes ~40 s to compile
    on CPU; this is one small compile per parameter shape."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: sgm_jax.build_model(config, dtype="bfloat16")))
    key = jax.random.key(0, impl="rbg")
    for index, (path, variable) in enumerate(nnx.to_flat_state(state)):
        kind = {"scale": "ones", "bias": "zeros"}.get(path[-1], "normal")
        placement = None if mesh is None else sharding.variable_sharding(variable, mesh)
        fill = _filler(variable.shape, variable.dtype, kind, placement)
        variable.set_value(fill(jax.random.fold_in(key, index)))
    return nnx.merge(graphdef, state)


def make_batch(model, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full rows of random text with one image each, its tokens after the first."""
    spec = model.spec
    n_image = spec.features_per_image
    if length < n_image + 2:
        raise SystemExit(f"--prompt-len must be at least {n_image + 2} (one image is {n_image} tokens)")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, spec.image_token_id, (batch, length)).astype(np.int32)
    ids[:, 1 : 1 + n_image] = spec.image_token_id
    size = spec.vision.image_size
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "pixel_values": rng.standard_normal((batch, 3, size, size)).astype(np.float32),
    }


def random_intervention(model, sites, seed: int) -> sgm_jax.Intervention:
    """SGM-like: alphas in [0, 1.4] on every neuron of every site."""
    rng = np.random.default_rng(seed)
    widths = sgm_jax.list_sites(model)
    return sgm_jax.Intervention({s: rng.uniform(0.0, 1.4, widths[s]) for s in sites}, {"method": "random"})


def parameter_counts(model) -> dict[str, int]:
    """Parameters by part: the vision tower, the projector, the decoder's embedding table, the rest of the decoder
    and the LM head (the matmul weights a decode step reads)."""
    parts = {"vision_tower": "vision", "multi_modal_projector": "projector", "embed_tokens": "embedding"}
    counts = {"vision": 0, "projector": 0, "embedding": 0, "decoder": 0}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        part = next((parts[name] for name in path if name in parts), "decoder")
        counts[part] += math.prod(variable.shape)
    return counts


def forward_flops(model, counts: dict[str, int], batch: int, length: int) -> float:
    """Model FLOPs of one forward: 2 x parameters x positions per matmul stack, and the attention products
    (QK^T and PV, full score matrices as computed) of the tower and the decoder."""
    spec = model.spec
    patches = spec.vision.num_patches + 1
    text = 2 * counts["decoder"] * length + 4 * spec.text.num_hidden_layers * spec.text.hidden_size * length**2
    vision = 2 * counts["vision"] * patches + 4 * spec.vision.num_hidden_layers * spec.vision.hidden_size * patches**2
    projector = 2 * counts["projector"] * spec.features_per_image
    return batch * (text + vision + projector)


def device_peaks(devices) -> tuple[float, float] | None:
    """Summed peak bfloat16 FLOP/s and HBM bytes/s of `devices`, or None for a device not in `PEAKS`."""
    kind = devices[0].device_kind.lower()
    for fragment, flops, bandwidth in PEAKS:
        if fragment in kind:
            return flops * len(devices), bandwidth * len(devices)
    return None


def first_call(fn) -> float:
    """Seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, seconds of the first call beyond the median: its compile)."""
    first = first_call(fn)
    median = median_seconds(fn, repeats, warmup=0)
    return median, max(0.0, first - median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    accelerator = jax.default_backend() != "cpu"
    parser.add_argument("--shape", choices=["7b", "small"], default="7b" if accelerator else "small")
    parser.add_argument("--batch", type=int, help="prompts per batch (default: 8 at 7b, 4 small)")
    parser.add_argument("--prompt-len", type=int, help="tokens per prompt, image included (default: 640 / 64)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per prompt (default: 128 / 16)")
    parser.add_argument("--sweep-k", type=int, default=8, help="interventions in the sweep, one chunk")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement after the first (default: 3)")
    parser.add_argument("--out", help="write the numbers as JSON to this file")
    args = parser.parse_args()
    shape = llava_shape(args.shape)
    batch = args.batch or shape.batch
    length = args.prompt_len or shape.prompt_len
    new = args.new_tokens or shape.new_tokens
    repeats = args.repeats or shape.repeats
    if new < 2:
        raise SystemExit("--new-tokens must be at least 2 (a decode step is timed against the prefill)")

    devices = jax.local_devices()
    mesh = sharding.make_mesh(data=1, fsdp=len(devices), tensor=1, devices=devices) if len(devices) > 1 else None
    start = time.perf_counter()
    model = random_model(shape.config.to_dict(), mesh)
    init_s = time.perf_counter() - start
    counts = parameter_counts(model)
    n_params = sum(counts.values())
    spec = model.spec
    inputs = make_batch(model, batch, length)
    sites = [ref.name for ref in resolve(model, SGM_SITES)]
    iv = random_intervention(model, sites, 0)
    gated = sgm_jax.intervene(model, iv)
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]

    collect_batches = 2
    prepared = model.prepare_inputs(ids, mask, {"pixel_values": pixels})
    settings = [random_intervention(model, sites, seed) for seed in range(1, args.sweep_k + 1)]
    last_logits = lambda m, ids, mask, images: m.forward(ids, attention_mask=mask, **images).logits[:, -1]
    calls = {
        "prefill": lambda: model(ids, attention_mask=mask, pixel_values=pixels).block_until_ready(),
        "collect": lambda: sgm_jax.collect_responses(model, [inputs] * collect_batches, sites=list(SGM_SITES)),
        "generate": lambda: sgm_jax.generate(
            gated, ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=new, temperature=0.0
        ),
        "sweep": lambda: sgm_jax.sweep(model, settings, last_logits, ids, mask, prepared, chunk_size=args.sweep_k),
    }
    with tempfile.TemporaryDirectory() as cache:
        compile_cache.enable(cache)  # fresh: the first calls compile and store, the second run's load
        measured = {name: timed(call, repeats) for name, call in calls.items()}
        jax.clear_caches()  # what a second process starts with: programs only in the persistent cache
        with count_compiles() as second_run:
            reloaded = {name: first_call(call) - measured[name][0] for name, call in calls.items()}
        compile_cache.enable(compile_cache.OFF)
    (forward_s, forward_compile), (collect_s, collect_compile) = measured["prefill"], measured["collect"]
    (generate_s, generate_compile), (sweep_s, sweep_compile) = measured["generate"], measured["sweep"]

    tokens = batch * length
    flops = forward_flops(model, counts, batch, length)
    peaks = device_peaks(devices)
    step_s = (generate_s - forward_s) / (new - 1)
    cache_len = bucket_length(length) + new
    kv_bytes = 2 * spec.text.num_hidden_layers * batch * cache_len * spec.text.num_key_value_heads * spec.text.head_dim
    step_bytes = 2 * (counts["decoder"] + kv_bytes)  # bfloat16
    results = {
        "device": devices[0].device_kind,
        "platform": devices[0].platform,
        "devices": len(devices),
        "peak_flops": peaks[0] if peaks else None,
        "peak_bandwidth": peaks[1] if peaks else None,
        "shape": args.shape,
        "parameters": n_params,
        "batch": batch,
        "prompt_len": length,
        "new_tokens": new,
        "sweep_k": args.sweep_k,
        "sites": len(sites),
        "repeats": repeats,
        "init_s": init_s,
        "prefill": {"seconds": forward_s, "tokens_per_s": tokens / forward_s, "flops": flops},
        "collect": {"seconds": collect_s, "samples_per_s": collect_batches * batch / collect_s},
        "generate": {
            "seconds": generate_s,
            "new_tokens_per_s": batch * new / generate_s,
            "step_seconds": step_s,
            "step_bytes": step_bytes,
        },
        "sweep": {"seconds": sweep_s, "settings_per_s": args.sweep_k / sweep_s},
        "compile_s": {
            "prefill": forward_compile,
            "collect": collect_compile,
            "generate": generate_compile,
            "sweep": sweep_compile,
        },
        "second_run_s": {name: max(0.0, s) for name, s in reloaded.items()},
        "second_run_programs": {"compiled": second_run.count, "loaded": second_run.cached},
    }
    if peaks:
        results["prefill"]["mfu"] = flops / forward_s / peaks[0]
        if step_s > 0:
            results["generate"]["bandwidth_fraction"] = step_bytes / step_s / peaks[1]

    peak_text = f"peak {peaks[0] / 1e12:.0f} TFLOP/s bf16, {peaks[1] / 1e12:.2f} TB/s" if peaks else "unknown peak"
    print(f"device: {devices[0].device_kind} x{len(devices)} ({devices[0].platform}); {peak_text}")
    print(f"model: {shape.description}, {n_params / 1e9:.3f}B parameters, bfloat16, random (init {init_s:.1f} s)")
    print(
        f"batch {batch} x {length} tokens ({spec.features_per_image} image tokens per row), {new} new tokens, "
        f"{len(sites)} gated sites, sweep K={args.sweep_k}; medians of {repeats}"
    )
    achieved = f"{flops / forward_s / 1e12:.3g} TFLOP/s"
    mfu = f"{achieved}, MFU {results['prefill']['mfu']:.1%}" if peaks else f"{achieved}, MFU: unknown peak"
    if step_s <= 0:
        bandwidth = "decode step: n/a (generation took no longer than a prefill)"
    else:
        rate = step_bytes / step_s / 1e12
        read = f"decode step {step_s * 1e3:.3g} ms reads {step_bytes / 1e9:.3g} GB: {rate:.3g} TB/s"
        bandwidth = f"{read}, {results['generate']['bandwidth_fraction']:.0%} of peak" if peaks else read
    rows = [
        ("prefill forward", forward_s, f"{tokens / forward_s:,.0f} tokens/s", mfu),
        ("pooled collection", collect_s, f"{collect_batches * batch / collect_s:,.1f} samples/s", ""),
        ("generate with gates", generate_s, f"{batch * new / generate_s:,.1f} new tokens/s", bandwidth),
        (f"sweep of {args.sweep_k} settings", sweep_s, f"{args.sweep_k / sweep_s:,.2f} settings/s", ""),
    ]
    print(f"{'measurement':22s} {'median':>11s}  {'throughput':22s} utilisation")
    for name, seconds, throughput, note in rows:
        print(f"{name:22s} {seconds * 1e3:8.1f} ms  {throughput:22s} {note}".rstrip())
    compiles = ", ".join(f"{name} {s:.1f} s" for name, s in results["compile_s"].items())
    print(f"compile (first call beyond the median): {compiles}")
    again = ", ".join(f"{name} {s:.1f} s" for name, s in results["second_run_s"].items())
    print(
        f"second run, from the compile cache: {again} ({second_run.count} programs compiled, "
        f"{second_run.cached} loaded)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
