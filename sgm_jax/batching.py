"""Batches as models take them: left padding, bucketed lengths, length-sorted plans, checked image inputs.

Every place that runs a model over many inputs (capture, generation, likelihood, the self judge, collection,
the organism trainer) batches through here, so they all pad the same way and compile the same few shapes.
Rows are left-padded (decoding continues at the right edge) to a bucketed length; the image inputs are
checked against the prompt by the model's own family rules before anything is compiled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import struct

from sgm_jax.errors import InputError

# Per-token arrays of an encoded sample: left-padded with the rows. Every other array is per image and is
# concatenated along its first axis.
TOKEN_KEYS = ("input_ids", "attention_mask", "targets")


def bucket_length(n: int, minimum: int = 16) -> int:
    """The padded length for `n` tokens: four steps per octave (..., 64, 80, 96, 112, 128, 160, ...).

    At most 25% padding (less after sorting by length), and a dataset whose lengths span
    one octave compiles at most five shapes.
    """
    if n <= minimum:
        return minimum
    octave = 1 << (n - 1).bit_length() - 1
    step = max(1, octave // 4)
    return -(-n // step) * step


def bucket_rows(n: int) -> int:
    """The padded row count for a batch of `n`: the next power of two. Defenses answer data-dependent subsets
    (the rows a prober or a self-check flags); padding them to a handful of sizes keeps compiles to a handful,
    at the cost of at most twice the rows in those partial batches."""
    return 1 << max(0, int(n) - 1).bit_length()


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so little compute goes to padding.

    Deterministic, so a resumed run follows the same plan and computes bitwise the same rows.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_token_id(processor) -> int:
    """The id padding positions hold: the tokenizer's pad token, else 0 (the attention mask hides them)."""
    return getattr(getattr(processor, "tokenizer", processor), "pad_token_id", None) or 0


def collate(encoded: Sequence[Mapping[str, np.ndarray]], pad_id: int = 0, rows: int = 0) -> dict[str, np.ndarray]:
    """Left-pad encoded samples into one batch as long as its longest row.

    Each sample has `input_ids` `[T]` and optionally other per-token arrays (`targets`) and image inputs
    (`pixel_values` `[images, ...]`); the batch gets an `attention_mask` and the images of all rows in order,
    zero-padded on their other axes to the largest (as a processor pads LLaVA-NeXT's tiles across images).
    With `rows`, a shorter batch is filled to that many rows by repeating its last sample (computed, then
    dropped by the caller): a run's short last batch reuses its full batches' compiled programs.
    """
    encoded = list(encoded) + [encoded[-1]] * (rows - len(encoded))
    length = max(len(e["input_ids"]) for e in encoded)
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


def left_pad(batch: Mapping[str, Any], length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """`batch` with its per-token arrays padded on the left to `length` (image inputs unchanged)."""
    out = dict(batch)
    for key in TOKEN_KEYS:
        if key in batch:
            values = np.asarray(batch[key])
            out[key] = np.pad(
                values, ((0, 0), (length - values.shape[1], 0)), constant_values=pad_id if key == "input_ids" else 0
            )
    return out


@struct.dataclass
class ModelBatch:
    """A batch checked against its model and padded to its bucket: what every compiled model call takes.

    Only `model_batch` makes one, from a raw dict; every consumer (capture, generation, likelihood, the
    defenses, the self judge) takes it as it is, so a batch is checked and prepared once. A pytree: it goes
    into jitted functions whole.
    """

    input_ids: np.ndarray
    """`[batch, bucket]` int32, left-padded."""
    attention_mask: np.ndarray
    """`[batch, bucket]` int32, 1 for real tokens."""
    inputs: dict[str, np.ndarray]
    """The family's prepared inputs, as `forward` takes them as keyword arguments (images, positions, ...)."""
    targets: np.ndarray | None = None
    """`[batch, bucket]` bool: the tokens a likelihood counts, where the batch was built to be scored."""

    def forward(self, model, **kwargs):
        """`model.forward` on this batch (traceable)."""
        return model.forward(self.input_ids, attention_mask=self.attention_mask, **self.inputs, **kwargs)


def model_batch(model, batch: Mapping[str, Any] | ModelBatch, pad_id: int = 0) -> ModelBatch:
    """A raw batch (`input_ids`, optionally `attention_mask`, `targets` and the processor's image inputs)
    checked and padded to its bucket; a `ModelBatch` is returned as it is.

    Fails before any compile, naming what is wrong: shapes that are not `[batch, seq]`, image inputs the
    model does not take or that do not fit the prompt's image tokens (the family's own rule).
    """
    if isinstance(batch, ModelBatch):
        return batch
    ids = np.asarray(batch["input_ids"])
    mask = np.asarray(batch["attention_mask"]) if batch.get("attention_mask") is not None else np.ones_like(ids)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise InputError(f"input_ids {ids.shape} and attention_mask {mask.shape} must be the same [batch, seq] shape")
    images = {key: np.asarray(value) for key, value in batch.items() if key not in TOKEN_KEYS and value is not None}
    model.check_inputs(ids, images)
    tokens = {"input_ids": ids.astype(np.int32), "attention_mask": (mask > 0).astype(np.int32)}
    if batch.get("targets") is not None:
        tokens["targets"] = np.asarray(batch["targets"], bool)
    tokens = left_pad(tokens, bucket_length(ids.shape[1]), pad_id)
    return ModelBatch(
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        inputs=model.prepare_inputs(tokens["input_ids"], tokens["attention_mask"], images),
        targets=tokens.get("targets"),
    )
