"""Dataset -> response store: encode, batch by length, capture pooled responses, write resumable chunks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from sgm_jax.capture import CaptureSpec, pooled_batch
from sgm_jax.data.encode import collate, encode, render
from sgm_jax.data.samples import Sample, dataset_hash
from sgm_jax.fingerprint import model_fingerprint
from sgm_jax.sites import resolve
from sgm_jax.store import ResponseStore


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Sample indices grouped into batches of similar length, so little compute goes to padding.

    Deterministic, so a resumed run follows the same plan and computes bitwise the same rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def estimated_lengths(samples: Sequence[Sample], processor, image_tokens: int) -> list[int]:
    """Token count of each rendered sample plus its image's expansion: cheap, and enough to order samples."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return [len(tokenizer(render(s, processor))["input_ids"]) + (image_tokens if s.image else 0) for s in samples]


def collect_to_store(model: nnx.Module, processor, samples: Sequence[Sample], out_dir: str, *, sites,
                     pooling: str = "mean", tokens: str = "all", batch_size: int = 8, model_name: str = "",
                     dataset_name: str = "", progress: bool = True) -> ResponseStore:
    """Collect pooled responses of `samples` at `sites` into the store at `out_dir`, resuming if it exists."""
    if processor is None:
        raise ValueError("the checkpoint has no tokenizer/processor files, so samples cannot be encoded")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = CaptureSpec(tuple(resolve(model, sites)), pooling, tokens)
    manifest = {
        "model": model_name, "model_fingerprint": model_fingerprint(model),
        "sites": {ref.name: ref.width for ref in spec.refs}, "pooling": pooling, "tokens": tokens,
        "dataset": dataset_name, "dataset_hash": dataset_hash(samples), "batch_size": batch_size,
        "sample_ids": [s.id for s in samples], "labels": [s.label for s in samples],
        "categories": [s.category for s in samples],
    }
    store = ResponseStore.create_or_resume(out_dir, manifest)
    if store.complete:
        return store
    plan = plan_batches(estimated_lengths(samples, processor, getattr(model.spec, "features_per_image", 0)), batch_size)
    todo = [i for i in range(len(plan)) if i not in store.done_batches()]
    pad_id = getattr(getattr(processor, "tokenizer", processor), "pad_token_id", None) or 0
    split = nnx.split(model)
    for index in tqdm(todo, desc="collect", unit="batch", disable=not progress,
                      initial=len(plan) - len(todo), total=len(plan)):
        rows = plan[index]
        batch = collate([encode(samples[i], processor) for i in rows], pad_id)
        store.write_batch(index, np.asarray(rows), pooled_batch(model, batch, spec, split=split))
    store.finalize(plan)
    return store
