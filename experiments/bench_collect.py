"""Response-collection benchmark: sgm_jax's pooled capture into a response store vs the PyTorch way.

The PyTorch way is ml-aura-vl's (`scripts/llava_response.py` + its save hook):
transformers forward with a forward hook on every site module that clones the
output, mean-pools it over the attention mask in torch and `torch.save`s one
file per sample per module, plus a checkpoint file per batch. sgm_jax runs its
jitted pooled capture and writes one chunk per batch to a response store, then
assembles the per-site arrays. Both get the same pre-tokenized samples of the
mid-size LLaVA shape (see shapes.py; lengths vary from half the maximum up) and
the same sites: the gate/up/down MLP projections of every decoder layer (SGM's).
Each batches them its own way: the PyTorch way in dataset order, padded to the
batch's longest row (a DataLoader with a padding collate); sgm_jax by its
collection plan (samples sorted by length, lengths bucketed).

    python experiments/bench_collect.py [--samples 64] [--batch 4] [--length 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration

import sgm_jax
from sgm_jax.decoding.batching import plan_batches
from sgm_jax.responses.capture import CaptureSpec, pooled_batch
from sgm_jax.responses.sites import default_sites, resolve
from sgm_jax.responses.store import ResponseStore
from sgm_jax.runtime.buckets import bucket_length
from shapes import make_inputs, mid_size_config


def padded_batches(samples, plan):
    """Left-padded `(ids, mask, pixels, sample_ids)` batches of the samples in each planned group."""
    batches = []
    for rows in plan:
        length = max(len(samples[i][0]) for i in rows)
        ids = np.zeros((len(rows), length), np.int64)
        mask = np.zeros((len(rows), length), np.int64)
        for r, i in enumerate(rows):
            n = len(samples[i][0])
            ids[r, length - n :], mask[r, length - n :] = samples[i][0], 1
        batches.append((ids, mask, np.stack([samples[i][1] for i in rows]), list(rows)))
    return batches


def torch_way(hf, batches, modules: list[str], out_dir: str) -> None:
    named = dict(hf.named_modules())
    state = {}

    def make_hook(name):
        def hook(module, args, output):
            mask = state["mask"].unsqueeze(-1).to(output.dtype)
            pooled = (output.detach().clone() * mask).sum(1) / mask.sum(1)
            for row, sample_id in enumerate(state["ids"]):
                path = os.path.join(out_dir, name, "mean", f"{sample_id}.pt")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                torch.save({"id": sample_id, "responses": pooled[row].cpu()}, path)

        return hook

    handles = [named[m].register_forward_hook(make_hook(m)) for m in modules]
    for index, (ids, mask, pixels, sample_ids) in enumerate(batches):
        state.update(mask=torch.tensor(mask), ids=sample_ids)
        with torch.inference_mode():
            hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pixels))
        torch.save({"current_batch": index + 1}, os.path.join(out_dir, "checkpoint.pt"))
    for handle in handles:
        handle.remove()


def jax_way(model, batches, spec: CaptureSpec, out_dir: str, n_samples: int) -> ResponseStore:
    store = ResponseStore.create_or_resume(
        out_dir,
        {
            "model": "bench",
            "model_fingerprint": "bench",
            "sites": {r.name: r.width for r in spec.refs},
            "pooling": spec.pooling,
            "tokens": spec.tokens,
            "dataset": "bench",
            "dataset_hash": "bench",
            "batch_size": len(batches[0][0]),
            "sample_ids": [str(i) for i in range(n_samples)],
            "labels": [0] * n_samples,
            "categories": [None] * n_samples,
        },
    )
    plan = []
    for index, (ids, mask, pixels, sample_ids) in enumerate(batches):
        out = pooled_batch(model, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}, spec)
        store.write_batch(index, np.asarray(sample_ids), out)
        plan.append(list(sample_ids))
    store.finalize(plan)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64, help="samples collected per side")
    parser.add_argument("--batch", type=int, default=4, help="samples per forward pass (both sides)")
    parser.add_argument("--length", type=int, default=256, help="longest sample; lengths vary from half of it up")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median is reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        torch.manual_seed(0)
        LlavaForConditionalGeneration(mid_size_config()).save_pretrained(os.path.join(work, "ckpt"))
        hf = LlavaForConditionalGeneration.from_pretrained(os.path.join(work, "ckpt"), dtype=torch.float32).eval()
        model, _ = sgm_jax.load_model(os.path.join(work, "ckpt"))
        spec = CaptureSpec(tuple(resolve(model, default_sites(model))))
        modules = [r.name for r in spec.refs]
        n_image = model.spec.features_per_image
        ids, mask, pixels = make_inputs(args.samples, args.length, n_image, min_length=args.length // 2)
        samples = [(row[m > 0], px) for row, m, px in zip(ids, mask, pixels)]
        dataset_order = [list(range(i, min(i + args.batch, args.samples))) for i in range(0, args.samples, args.batch)]
        torch_batches = padded_batches(samples, dataset_order)
        batches = padded_batches(samples, plan_batches([len(s[0]) for s in samples], args.batch))

        # Warm-up: compile every bucket once, let torch settle.
        jax_way(model, batches, spec, os.path.join(work, "warm"), args.samples)
        torch_way(hf, torch_batches[:1], modules, os.path.join(work, "warm-torch"))

        times = {"torch": [], "jax": []}
        for repeat in range(args.repeats):
            start = time.perf_counter()
            torch_way(hf, torch_batches, modules, os.path.join(work, f"torch{repeat}"))
            times["torch"].append(time.perf_counter() - start)
            start = time.perf_counter()
            store = jax_way(model, batches, spec, os.path.join(work, f"jax{repeat}"), args.samples)
            times["jax"].append(time.perf_counter() - start)

        site = modules[-1]
        ours = store.load(site)[0]
        theirs = torch.load(os.path.join(work, "torch0", site, "mean", "0.pt"))["responses"].numpy()
        diff = float(np.abs(ours - theirs).max())

    t_torch, t_jax = float(np.median(times["torch"])), float(np.median(times["jax"]))
    files = args.samples * len(modules)
    print(
        f"mid-size LLaVA, {args.samples} samples in batches of {args.batch}, rows of {args.length // 2}-"
        f"{args.length} tokens ({n_image} image tokens), {len(modules)} sites "
        f"({sum(r.width for r in spec.refs)} neurons), mean pooling, float32"
    )
    print(
        f"padded tokens computed: PyTorch way {sum(b[0].size for b in torch_batches)}, "
        f"sgm_jax {sum(bucket_length(b[0].shape[1]) * len(b[3]) for b in batches)} "
        f"(real: {sum(len(s[0]) for s in samples)})"
    )
    print(f"max |pooled difference| on {site}: {diff:.2e}")
    print(f"PyTorch way (hooks, {files} .pt files): {t_torch:7.2f} s  ({args.samples / t_torch:7.1f} samples/s)")
    print(f"sgm_jax (pooled in jit, store)       : {t_jax:7.2f} s  ({args.samples / t_jax:7.1f} samples/s)")
    print(f"speed-up: {t_torch / t_jax:.2f}x")


if __name__ == "__main__":
    main()
