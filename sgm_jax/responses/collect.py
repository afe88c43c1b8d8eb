"""Dataset -> response store: encode, batch by length, capture pooled responses, write resumable chunks."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from sgm_jax.data.encode import RawText, SquareImages, encode
from sgm_jax.data.samples import Sample, dataset_hash
from sgm_jax.decoding.batching import collate, pad_token_id, plan_batches, shared_length
from sgm_jax.decoding.lengths import check_lengths, estimated_lengths
from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.responses.capture import CaptureSpec, compile_pooled, pooled_batch
from sgm_jax.responses.sites import resolve
from sgm_jax.responses.store import ResponseStore
from sgm_jax.runtime import distributed
from sgm_jax.runtime.buckets import bucket_length
from sgm_jax.runtime.errors import CheckpointError, OptionError
from sgm_jax.runtime.locks import writer_lock


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
    """Collect pooled responses of `samples` at `sites` into the store at `out_dir`, resuming if it exists.

    Everything is checked before the store is touched (sites, batch size, every sample's length); the store
    is locked while it is written, and a damaged chunk or responses file found on a rerun is recomputed. In a
    job over several processes each computes its share of the batches and process 0 writes them: the store is
    bitwise what one process writes (the others get it back when its folder is shared, else None)."""
    if processor is None:
        raise CheckpointError("the checkpoint has no tokenizer/processor files, so samples cannot be encoded")
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    spec = CaptureSpec(tuple(resolve(model, sites)), pooling, tokens)
    lengths = estimated_lengths(samples, processor, model.tokens_per_image)
    check_lengths(model, samples, lengths)
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
    if isinstance(processor, RawText):  # only then: stores of chat-rendered prompts keep their manifest
        manifest["prompts"] = "raw text"
    group = distributed.cluster()
    with writer_lock(out_dir, "store") if group.writer else contextlib.nullcontext():
        plan, length = _plan(lengths, batch_size)
        store = ResponseStore.create_or_resume(out_dir, manifest) if group.writer else None
        todo = distributed.broadcast_json(_todo(store, plan) if store is not None else None)

        def pooled(index: int) -> dict[str, np.ndarray]:
            rows = plan[index]
            encoded = [encode(samples[i], processor) for i in rows]
            check_lengths(model, [samples[i] for i in rows], [len(e["input_ids"]) for e in encoded])
            pooled = pooled_batch(model, _batch(encoded, processor, plan, length), spec)
            return {site: values[: len(rows)] for site, values in pooled.items()}

        bar = tqdm(desc="collect", unit="batch", disable=not progress, initial=len(plan) - len(todo), total=len(plan))
        for results in distributed.rounds(todo, pooled, distributed.encode_arrays, distributed.decode_arrays):
            for position, responses in results:
                if store is not None:
                    store.write_batch(todo[position], np.asarray(plan[todo[position]]), responses)
                bar.update()
        bar.close()
        if store is not None and not store.complete:
            store.finalize(plan)
    distributed.barrier()  # the store is whole before any process reads it
    if store is not None or not os.path.exists(os.path.join(out_dir, "manifest.json")):
        return store
    return ResponseStore(out_dir)


def _plan(lengths: list[int], batch_size: int) -> tuple[list[list[int]], int]:
    """The batches of a collection, and the one length they pad to (0: each its own bucket)."""
    plan = plan_batches(lengths, batch_size)
    return plan, shared_length(lengths, plan)


def _batch(encoded: list[dict], processor, plan: list[list[int]], length: int) -> dict[str, np.ndarray]:
    """A planned batch as the capture takes it: the last batch filled to the plan's rows, every batch padded to the
    plan's length (a program or few for the run)."""
    return collate(encoded, pad_token_id(processor), len(plan[0]), length)


def warm_capture(
    model: CausalLM, processor, samples: Sequence[Sample], *, sites, pooling: str, tokens: str, batch_size: int
) -> None:
    """Compile, ahead of time, each capture program `collect_to_store` will run on `samples` (one per padded
    shape), for the compile cache to hand over; `model` may be abstract (`load_model(warm=...)`)."""
    spec = CaptureSpec(tuple(resolve(model, sites)), pooling, tokens)
    lengths = estimated_lengths(samples, processor, model.tokens_per_image)
    plan, length = _plan(lengths, batch_size)
    buckets = set()
    for rows in plan:  # one batch encoded per padded length: the others share its program
        bucket = length or bucket_length(max(lengths[i] for i in rows))
        if bucket in buckets:
            continue
        buckets.add(bucket)
        compile_pooled(model, _batch([encode(samples[i], processor) for i in rows], processor, plan, length), spec)


def _todo(store: ResponseStore, plan: list[list[int]]) -> list[int]:
    """The planned batches the store still lacks (all of them for a new store; none when it is complete and
    sound), the store made ready to take them."""
    if store.complete:
        damaged = store.damaged_responses()
        if not damaged:
            return []
        print(
            f"store {store.directory}: responses of {damaged[:3]} are damaged; collecting them again", file=sys.stderr
        )
        store.reopen()
    intact = store.intact_batches()
    return [i for i in range(len(plan)) if i not in intact]
