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
from sgm_jax.decoding.generate import decode, decode_arguments
from sgm_jax.decoding.lengths import check_lengths
from sgm_jax.runtime.buckets import bucket_rows


def plain_answers(model, processor, samples: Sequence[Sample], **options) -> list[str]:
    """One batch of answers (the reference responses are never shown), stripped, special tokens dropped;
    `options` are `answer_arguments`' (`max_new_tokens`, `temperature`, `seed`, `rows`, `length`)."""
    if not samples:
        return []
    args, static = answer_arguments(model, processor, samples, **options)
    tokens, steps = decode(model, *args, **static)
    tokenizer = getattr(processor, "tokenizer", processor)
    rows = np.asarray(tokens)[: len(samples), : int(steps)]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]


def answer_arguments(
    model,
    processor,
    samples: Sequence[Sample],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    rows: int | None = None,
    length: int = 0,
) -> tuple[tuple, dict]:
    """`decode`'s `(args, static)` for the prompts of `samples` (responses never shown): what `plain_answers` runs,
    and what a warm-up compiles ahead of time (`evaluate.answers.warm_answers`).

    The batch is padded with repeated rows to `rows` (default: the next power of two), so the subsets a defense
    answers (flagged rows) reuse a few compiled shapes, and on the left to `length` tokens at least (a run's one
    prompt length, `sgm_jax.decoding.lengths.run_length`)."""
    prompts = [dataclasses.replace(s, response=None) for s in samples]
    encoded = [encode(s, processor) for s in prompts]
    check_lengths(model, prompts, [len(e["input_ids"]) for e in encoded], new_tokens=max_new_tokens)
    inputs = collate(encoded, pad_token_id(processor), rows or bucket_rows(len(encoded)), length)
    return decode_arguments(
        model,
        inputs.pop("input_ids"),
        attention_mask=inputs.pop("attention_mask"),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        processor=processor,
        **inputs,
    )
