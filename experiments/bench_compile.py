"""Compile time and compiled memory of sgm_jax's programs at a 7B recipe's shapes, ahead of time, from this host.

Nothing executes and nothing is downloaded: the model is built abstractly (`nnx.eval_shape`), its weights and inputs
are `jax.ShapeDtypeStruct`s placed on a mesh, and the library's own jitted functions are traced, lowered and
compiled for

- XLA:CPU (this host's devices), and
- XLA:TPU, when the `libtpu` wheel is installed (the `tpu` extra: `pip install -e ".[tpu]"`, on any host): the
  real TPU compiler driven through `jax.experimental.topologies` for one chip of a v5e or v6e, or for the recipe's
  mesh over 8 of them, so partitioning counts too (as MaxText's `train_compile.py` does). Off a TPU VM the script
  keeps jax on the CPU platform and tells libtpu it has no TPU hosts to find.

Per program it prints the trace, lower and compile seconds, the compiled memory analysis (arguments, outputs,
temporaries, aliased bytes) beside what the model needs in theory (its weights; the generate program's KV cache and
one decode step's activations), and the compiler's FLOP count beside the model's (2 x matmul parameters x tokens plus
the attention products). The programs, at batch 8 x 640 tokens (576 image tokens for LLaVA-1.5, 256 for
Qwen2.5-VL), bfloat16:

- forward: `prepared_logits`, what a forward pass over a prepared batch compiles;
- capture: `pooled_responses` at the recipe's SGM sites (`sgm-jax collect`, one batch);
- generate: `decode`, prefill + KV-cached greedy decoding of 128 new tokens under an SGM intervention's gates;
- sweep: `decode_swept`, the same under K gate states at once (`sgm-jax sweep`);
- likelihood: `target_logprobs` (perplexity, multiple choice, answer scoring).

With forward and generate both compiled it also says how generate's temporaries compare with the KV cache plus the
prefill's activations (the forward's own temporaries). The batch reaches the mesh as the library places it, rows
split over the data axes (`--inputs replicated` shows what unplaced host arrays cost).

It ends with its model of a whole run, `sgm-jax collect` + `score` + `evaluate` on 1,000 image prompts at the
recipe's image size: the programs the library's own batch planning makes of them, one per distinct (role, padded
shape, model), and what they cost at the compile times measured above.

    python experiments/bench_compile.py [--model llava-1.5-7b|qwen2.5-vl-7b-instruct] [--target cpu v5e v6e]
        [--mesh one|recipe] [--programs forward capture generate sweep likelihood] [--sweep-k 8]
        [--inputs split|replicated]
"""

from __future__ import annotations

import argparse
import os
import time

if "TPU_WORKER_HOSTNAMES" not in os.environ:  # not on a TPU VM: compile for TPUs without looking for any
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.update(TPU_WORKER_HOSTNAMES="localhost", TPU_ACCELERATOR_TYPE="v6e-8")

import jax  # noqa: E402
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from transformers import Qwen2_5_VLConfig

import sgm_jax
from bench_accelerator import llava_shape, parameter_counts
from sgm_jax.decoding.batching import plan_batches, shared_length
from sgm_jax.decoding.generate import decode, decode_arguments, decode_swept
from sgm_jax.evaluate.likelihood import target_logprobs
from sgm_jax.interventions.sweep import GateStack
from sgm_jax.models.batch import model_batch
from sgm_jax.models.causal_lm import prepared_logits
from sgm_jax.responses.capture import CaptureSpec, _pooled_compiled, prepare_batch
from sgm_jax.responses.sites import resolve
from sgm_jax.runtime.buckets import bucket_length
from sgm_jax.weights import recipes, sharding

BATCH, LENGTH, NEW_TOKENS = 8, 640, 128
GiB = 2**30
PROGRAMS = ("forward", "capture", "generate", "sweep", "likelihood")
# One chip, or the 8-chip slice the recipes' `tpu-v5e-8` mesh names (fsdp over all 8), per TPU generation.
TOPOLOGIES = {"v5e": ("v5e:1x1", "v5e:2x4"), "v6e": ("v6e:1x1", "v6e:2x4")}


def qwen25_vl_7b() -> dict:
    """Qwen2.5-VL-7B-Instruct's config (its config.json's sizes)."""
    vision = dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        temporal_patch_size=2,
        spatial_merge_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        hidden_act="silu",
    )
    text = dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        rms_norm_eps=1e-6,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    )
    config = Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=False,
    )
    return config.to_dict()


def llava_inputs(model, rng) -> dict[str, np.ndarray]:
    spec = model.spec
    ids = rng.integers(3, spec.image_token_id, (BATCH, LENGTH)).astype(np.int32)
    ids[:, 1 : 1 + spec.features_per_image] = spec.image_token_id
    size = spec.vision.image_size
    return {"input_ids": ids, "pixel_values": rng.standard_normal((BATCH, 3, size, size)).astype(np.float32)}


def qwen_inputs(model, rng) -> dict[str, np.ndarray]:
    """One 448 x 448 image per row: a 32 x 32 patch grid, 256 merged tokens between the vision markers."""
    grid, n_image = 32, 256
    ids = rng.integers(3, 151643, (BATCH, LENGTH)).astype(np.int32)
    ids[:, 1], ids[:, 2 + n_image] = 151652, 151653
    ids[:, 2 : 2 + n_image] = 151655
    return {
        "input_ids": ids,
        "mm_token_type_ids": (ids == 151655).astype(np.int64),
        "pixel_values": rng.standard_normal((BATCH * grid * grid, 3 * 2 * 14 * 14)).astype(np.float32),
        "image_grid_thw": np.tile(np.array([[1, grid, grid]], np.int64), (BATCH, 1)),
    }


# (config, inputs, positions per image through the vision tower, tokens per image in the prompt)
MODELS = {
    "llava-1.5-7b": (lambda: llava_shape("7b").config.to_dict(), llava_inputs, 577, 576),
    "qwen2.5-vl-7b-instruct": (qwen25_vl_7b, qwen_inputs, 1024, 256),
}


def abstract_inputs(tree, mesh: Mesh, split_batch: bool):
    """Host arrays as abstract ones on `mesh`: replicated (as the library's host inputs reach a sharded model), or
    with `split_batch` each array whose first axis is the batch split over the data axes (`batch_sharding`)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf(x):
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        split = split_batch and x.ndim and x.shape[0] == BATCH
        placement = sharding.batch_sharding(mesh, x.shape) if split else replicated
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement)

    return jax.tree.map(leaf, tree)


def program_calls(model: nnx.Module, inputs: dict, recipe, sweep_k: int):
    """`{program: (jitted function, args, kwargs)}` on concrete host inputs (abstracted per target)."""
    sites = resolve(model, recipe.default_sites)
    widths = sgm_jax.list_sites(model)
    alphas = {ref.name: np.full(widths[ref.name], 0.5, np.float32) for ref in sites}
    gated = sgm_jax.intervene(model, sgm_jax.Intervention(alphas))
    batch = model_batch(model, inputs)
    spec = CaptureSpec(tuple(sites), "mean", "all")
    prepared, image_rows = prepare_batch(batch, model, spec)
    args, static = decode_arguments(gated, max_new_tokens=NEW_TOKENS, **inputs)
    targets = np.zeros_like(batch.input_ids, bool)
    targets[:, -64:] = True  # a 64-token answer scored after its prompt
    stack = GateStack(model, [ref.name for ref in sites])
    gates = stack.padded_state([], sweep_k)
    return {
        "forward": (prepared_logits, (model, batch), {}),
        "capture": (_pooled_compiled, (model, prepared, image_rows), {"spec": spec}),
        "generate": (decode, (gated, *args), static),
        "sweep": (decode_swept, (gates, stack.rest, *args), {"graphdef": stack.graphdef, **static}),
        "likelihood": (target_logprobs, (model, batch.replace(targets=targets)), {}),
    }


def theory(model: nnx.Module, counts: dict[str, int]) -> dict[str, float]:
    """Bytes of the weights and of the generate program's KV cache, in bfloat16."""
    text = model.spec.text
    cache = 2 * text.num_hidden_layers * BATCH * text.num_key_value_heads * (LENGTH + NEW_TOKENS) * text.head_dim * 2
    return {"weights": 2 * sum(counts.values()), "kv_cache": cache}


def model_flops(model, counts: dict[str, int], program: str, vision_positions: int, sweep_k: int) -> float:
    """Model FLOPs of a program: 2 x matmul parameters x positions through each tower (the decoder's embedding
    table is a lookup), QK^T and PV over full score matrices, and for decoding one position per row and step
    attending its cache."""
    text = model.spec.text
    layers, width = text.num_hidden_layers, text.hidden_size
    prefill = BATCH * (2 * counts["decoder"] * LENGTH + 4 * layers * width * LENGTH**2)
    prefill += BATCH * 2 * (counts["vision"] + counts["projector"]) * vision_positions
    if program not in ("generate", "sweep"):
        return prefill
    steps = BATCH * sum(2 * counts["decoder"] + 4 * layers * width * (LENGTH + t) for t in range(NEW_TOKENS))
    return (prefill + steps) * (sweep_k if program == "sweep" else 1)


def run_programs(image_tokens: int, seed: int = 0, samples: int = 1000) -> dict[str, list[tuple]]:
    """The programs a run compiles, by role: `[(model, padded length), ...]` as the library plans its batches.

    The data are drawn, not read: `samples` prompts of 8-64 text tokens, each with one image and a 16-128 token
    response (collect reads prompt + response), 40 chat-template tokens, an answer of up to 32 tokens, half the
    prompts with 4 options of 1-8 tokens, and 200 neutral sentences of 12-48 tokens, batches of 8 (the CLI's
    default). Lengths a batch pads to follow `plan_batches` and `shared_length` (capture, likelihood) and
    `run_length`'s one length per run (generation); a program is one (function, model, shape)."""
    rng = np.random.default_rng(seed)
    prompts = 40 + image_tokens + rng.integers(8, 65, samples)
    responses = rng.integers(16, 129, samples)
    answers = rng.integers(1, 33, samples)
    options = (prompts[: samples // 2, None] + rng.integers(1, 9, (samples // 2, 4))).ravel()
    neutral = rng.integers(12, 49, 200)

    def padded(lengths) -> set[int]:  # the lengths one scoring or capture call pads its batches to
        lengths = [int(n) for n in lengths]
        plan = plan_batches(lengths, BATCH)
        return {shared_length(lengths, plan) or bucket_length(max(lengths[i] for i in rows)) for rows in plan}

    return {
        "capture (collect)": [("plain", n) for n in sorted(padded(prompts + responses))],
        "generate (evaluate: before, after)": [(m, bucket_length(int(prompts.max()))) for m in ("plain", "gated")],
        "likelihood (answers, multiple choice, neutral text)": sorted(
            {("plain", n) for n in padded(prompts + answers)}
            | {(m, n) for m in ("plain", "gated") for n in padded(options)}
            | {(f"{m} text-only", n) for m in ("plain", "gated") for n in padded(neutral)}
        ),
    }


def print_run_model(image_tokens: int, compile_seconds: dict[str, float]) -> None:
    """The run model's programs, and their compile time at this target's measured seconds per program."""
    total, seconds = 0, 0.0
    print(f"\nA run (collect + score + evaluate; score's AUROC is one small program), {image_tokens} image tokens:")
    print("| role | programs | (model, padded length) |\n|---|---|---|")
    for role, programs in run_programs(image_tokens).items():
        print(f"| {role} | {len(programs)} | {', '.join(f'{m} {n}' for m, n in programs)} |")
        total += len(programs)
        measured = compile_seconds.get(role.split()[0])
        seconds += len(programs) * measured if measured is not None else float("nan")
    cost = f"at this table's compile times about {seconds / 60:.0f} minutes" if seconds == seconds else "(compile"
    cost += ", once: a rerun loads them" if seconds == seconds else " capture, generate and likelihood for their time)"
    print(f"{total} programs {cost}")


def compile_one(fn, args, kwargs) -> dict:
    start = time.perf_counter()
    traced = fn.trace(*args, **kwargs)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "trace_s": traced_at - start,
        "lower_s": lowered_at - traced_at,
        "compile_s": done - lowered_at,
        "arguments": memory.argument_size_in_bytes,
        "outputs": memory.output_size_in_bytes,
        "temporaries": memory.temp_size_in_bytes,
        "aliased": memory.alias_size_in_bytes,
        "flops": (cost or {}).get("flops", float("nan")),
    }


def target_meshes(targets: list[str], mesh_kind: str, recipe) -> list[tuple[str, Mesh]]:
    meshes = []
    for target in targets:
        if target == "cpu":
            meshes.append(("XLA:CPU, one device", sharding.make_mesh(1, 1, 1, devices=jax.devices("cpu")[:1])))
            continue
        from jax.experimental import topologies

        one, slice_ = TOPOLOGIES[target]
        if mesh_kind == "one":
            devices = topologies.get_topology_desc(one, platform="tpu", chips_per_host_bounds=(1, 1, 1)).devices
            meshes.append((f"XLA:TPU {target}, one chip", sharding.make_mesh(1, 1, 1, devices=devices)))
        else:
            devices = topologies.get_topology_desc(slice_, platform="tpu").devices
            layout = recipe.mesh.get("tpu-v5e-8", {"data": 1, "fsdp": 8, "tensor": 1})
            mesh = sharding.make_mesh(layout["data"], layout["fsdp"], layout["tensor"], devices=devices)
            meshes.append((f"XLA:TPU {target}, 8 chips as {dict(mesh.shape)}", mesh))
    return meshes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="llava-1.5-7b")
    parser.add_argument("--target", nargs="+", choices=["cpu", *TOPOLOGIES], default=["cpu"])
    parser.add_argument("--mesh", choices=["one", "recipe"], default="one")
    parser.add_argument("--programs", nargs="+", choices=PROGRAMS, default=list(PROGRAMS))
    parser.add_argument("--sweep-k", type=int, default=8)
    parser.add_argument(
        "--inputs",
        choices=["split", "replicated"],
        default="split",
        help="how the batch reaches the mesh: its rows split over the data axes, as the library places it "
        "(`place_batch`), or replicated, as host arrays reach jit unplaced",
    )
    args = parser.parse_args()
    os.environ.setdefault("SGM_JAX_COMPILE_CACHE", "off")  # every program compiled afresh

    config, make_inputs, vision_positions, image_tokens = MODELS[args.model]
    recipe = recipes.load_recipe(args.model)
    model = nnx.eval_shape(lambda: sgm_jax.build_model(config(), dtype="bfloat16"))
    counts = parameter_counts(model)
    calls = program_calls(model, make_inputs(model, np.random.default_rng(0)), recipe, args.sweep_k)
    needs = theory(model, counts)
    print(
        f"{args.model}: {sum(counts.values()) / 1e9:.2f}B parameters ({needs['weights'] / GiB:.2f} GiB bf16), batch "
        f"{BATCH} x {LENGTH} tokens, {NEW_TOKENS} new; KV cache {needs['kv_cache'] / GiB:.2f} GiB; "
        f"jax {jax.__version__}"
    )
    header = "| program | trace s | lower s | compile s | arguments GiB | outputs GiB | temporaries GiB | aliased GiB |"
    for title, mesh in target_meshes(args.target, args.mesh, recipe):
        print(f"\n{title}\n{header} compiler GFLOP | model GFLOP |\n|" + "---|" * 10)
        temporaries, seconds = {}, {}
        for program in args.programs:
            fn, call_args, kwargs = calls[program]
            placed = [
                sharding.abstract_placed(a, mesh)
                if isinstance(a, (nnx.Module, nnx.State))
                else abstract_inputs(a, mesh, args.inputs == "split")
                for a in call_args
            ]
            try:
                r = compile_one(fn, placed, kwargs)
            except jax.errors.JaxRuntimeError as error:  # the compiler's verdict is a result too (HBM too small)
                print(f"| {program} | does not compile: {str(error).splitlines()[0][:160]} |", flush=True)
                continue
            temporaries[program], seconds[program] = r["temporaries"], r["compile_s"]
            print(
                f"| {program} | {r['trace_s']:.1f} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
                f"{r['arguments'] / GiB:.2f} | {r['outputs'] / GiB:.3f} | {r['temporaries'] / GiB:.2f} | "
                f"{r['aliased'] / GiB:.2f} | {r['flops'] / 1e9:,.0f} | "
                f"{model_flops(model, counts, program, vision_positions, args.sweep_k) / 1e9:,.0f} |",
                flush=True,
            )
        if "generate" in temporaries and "forward" in temporaries:  # the prefill's activations: forward's own
            rows_split = mesh.shape["data"] * mesh.shape["fsdp"] if args.inputs == "split" else 1
            cache = needs["kv_cache"] / rows_split
            print(
                f"generate's temporaries are {temporaries['generate'] / (cache + temporaries['forward']):.2f}x the "
                f"KV cache ({cache / GiB:.2f} GiB per chip) plus the prefill's activations (forward's temporaries)"
            )
        print_run_model(image_tokens, seconds)


if __name__ == "__main__":
    main()
