"""Dataset -> response store: encode, batch by length, capture pooled responses, write resumable chunks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from sgm_jax.batching import collate, pad_token_id, plan_batches
from sgm_jax.capture import CaptureSpec, pooled_batch
from sgm_jax.data.encode import SquareImages, encode, render
from sgm_jax.data.samples import Sample, dataset_hash
from sgm_jax.fingerprint import model_fingerprint
from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.sites import resolve
from sgm_jax.store import ResponseStore


def estimated_lengths(samples: Sequence[Sample], processor, image_tokens: int) -> list[int]:
    """Token count of each rendered sample plus its image's expansion: cheap, and enough to order samples."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return [len(tokenizer(render(s, processor))["input_ids"]) + (image_tokens if s.image else 0) for s in samples]


def collect_to_store(
    model: CausalLM,
    processor,
    samples: Sequence[Sample],
    out_dir: str,
    *,
    sites,
    pooling: str = "mean",
    tokens: str = "all",
    batch_size: int = 8,
    model_name: str = "",
    dataset_name: str = "",
    progress: bool = True,
) -> ResponseStore:
    """Collect pooled responses of `samples` at `sites` into the store at `out_dir`, resuming if it exists."""
    if processor is None:
        raise ValueError("the checkpoint has no tokenizer/processor files, so samples cannot be encoded")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = CaptureSpec(tuple(resolve(model, sites)), pooling, tokens)
    manifest = {
        "model": model_name,
        "model_fingerprint": model_fingerprint(model),
        "sites": {ref.name: ref.width for ref in spec.refs},
        "pooling": pooling,
        "tokens": tokens,
        "dataset": dataset_name,
        "dataset_hash": dataset_hash(samples),
        "batch_size": batch_size,
        "image_size": processor.image_size if isinstance(processor, SquareImages) else None,
        "sample_ids": [s.id for s in samples],
        "labels": [s.label for s in samples],
        "categories": [s.category for s in samples],
    }
    store = ResponseStore.create_or_resume(out_dir, manifest)
    if store.complete:
        return store
    plan = plan_batches(estimated_lengths(samples, processor, model.tokens_per_image), batch_size)
    todo = [i for i in range(len(plan)) if i not in store.done_batches()]
    pad_id = pad_token_id(processor)
    for index in tqdm(
        todo, desc="collect", unit="batch", disable=not progress, initial=len(plan) - len(todo), total=len(plan)
    ):
        rows = plan[index]
        batch = collate([encode(samples[i], processor) for i in rows], pad_id)
        store.write_batch(index, np.asarray(rows), pooled_batch(model, batch, spec))
    store.finalize(plan)
    return store
