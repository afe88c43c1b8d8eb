"""Samples in, answer texts out: the one plain path from a prompt (chat template, image) to decoded text.

Evaluation answers through it, and so does every defense that needs an ordinary generation (ECSO's
self-check, caption and text-only answer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.decoding.batching import collate, pad_token_id
from sgm_jax.decoding.generate import generate
from sgm_jax.decoding.lengths import check_lengths
from sgm_jax.runtime.buckets import bucket_rows


def plain_answers(
    model,
    processor,
    samples: Sequence[Sample],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    rows: int | None = None,
    length: int = 0,
) -> list[str]:
    """One batch of answers (the reference responses are never shown), stripped, special tokens dropped.

    The batch is padded with repeated rows to `rows` (default: the next power of two), so the subsets a
    defense answers (flagged rows) reuse a few compiled shapes, and on the left to `length` tokens at least
    (a run's one prompt length, `sgm_jax.decoding.lengths.run_length`)."""
    if not samples:
        return []
    inputs = answer_inputs(model, processor, samples, max_new_tokens=max_new_tokens, rows=rows, length=length)
    tokens = generate(
        model,
        inputs.pop("input_ids"),
        attention_mask=inputs.pop("attention_mask"),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        processor=processor,
        **inputs,
    )
    tokenizer = getattr(processor, "tokenizer", processor)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in np.asarray(tokens)[: len(samples)]]


def answer_inputs(
    model, processor, samples: Sequence[Sample], *, max_new_tokens: int, rows: int | None = None, length: int = 0
) -> dict[str, np.ndarray]:
    """The prompts of `samples` (responses never shown) as one checked batch, padded as `plain_answers` says."""
    prompts = [dataclasses.replace(s, response=None) for s in samples]
    encoded = [encode(s, processor) for s in prompts]
    check_lengths(model, prompts, [len(e["input_ids"]) for e in encoded], new_tokens=max_new_tokens)
    return collate(encoded, pad_token_id(processor), rows or bucket_rows(len(encoded)), length)
