"""Batches as models take them: length-sorted plans and rows collated with left padding.

Every place that runs a model over many inputs (capture, generation, likelihood, the self judge, collection,
the organism trainer) batches through here, so they all pad the same way and compile the same few shapes; the
padded shapes themselves are `sgm_jax.runtime.buckets`', and a raw batch becomes the model's prepared input in
`sgm_jax.models.batch`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sgm_jax.runtime.buckets import TOKEN_KEYS, bucket_length
from sgm_jax.runtime.errors import InputError


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so little compute goes to padding.

    Deterministic, so a resumed run follows the same plan and computes bitwise the same rows.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def shared_length(lengths: Sequence[int], plan: list[list[int]], most: float = 2.0) -> int:
    """One length every batch of `plan` pads to (the bucket of the longest), or 0: each pads to its own bucket.

    Each distinct padded length is a compiled program (at 7B on a TPU, about a minute each); one length for all
    trades that for compute on padding. It is chosen unless it runs more than `most` times the tokens that
    per-batch buckets would: a set of short texts, or prompts that share an image's 576 tokens, compiles once;
    a set spanning 20 to 2,000 tokens keeps its buckets.
    """
    if not plan:
        return 0
    rows = len(plan[0])
    own = sum(bucket_length(max(int(lengths[i]) for i in batch)) * rows for batch in plan)
    one = bucket_length(max(int(n) for n in lengths))
    return one if one * rows * len(plan) <= most * own else 0


def pad_token_id(processor) -> int:
    """The id padding positions hold: the tokenizer's pad token, else 0 (the attention mask hides them)."""
    return getattr(getattr(processor, "tokenizer", processor), "pad_token_id", None) or 0


def collate(
    encoded: Sequence[Mapping[str, np.ndarray]], pad_id: int = 0, rows: int = 0, length: int = 0
) -> dict[str, np.ndarray]:
    """Left-pad encoded samples into one batch as long as its longest row, or `length` if that is longer.

    Each sample has `input_ids` `[T]` and optionally other per-token arrays (`targets`) and image inputs
    (`pixel_values` `[images, ...]`); the batch gets an `attention_mask` and the images of all rows in order,
    zero-padded on their other axes to the largest (as a processor pads LLaVA-NeXT's tiles across images).
    With `rows`, a shorter batch is filled to that many rows by repeating its last sample (computed, then
    dropped by the caller): a run's short last batch reuses its full batches' compiled programs.
    """
    encoded = list(encoded) + [encoded[-1]] * (rows - len(encoded))
    length = max([length] + [len(e["input_ids"]) for e in encoded])
    batch = {
        "input_ids": np.full((len(encoded), length), pad_id, np.int32),
        "attention_mask": np.zeros((len(encoded), length), np.int32),
    }
    for key in TOKEN_KEYS[2:]:
        if any(key in e for e in encoded):
            batch[key] = np.zeros((len(encoded), length), np.asarray(encoded[0][key]).dtype)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        batch["input_ids"][row, length - n :] = e["input_ids"]
        batch["attention_mask"][row, length - n :] = 1
        for key in TOKEN_KEYS[2:]:
            if key in e:
                batch[key][row, length - n :] = e[key]
    for key in sorted({k for e in encoded for k in e} - set(TOKEN_KEYS)):
        parts = [np.asarray(e[key]) for e in encoded if key in e]
        largest = np.max([p.shape for p in parts], axis=0)
        batch[key] = np.concatenate(
            [np.pad(p, [(0, 0)] + [(0, n - d) for n, d in zip(largest[1:], p.shape[1:])]) for p in parts]
        )
    return batch
