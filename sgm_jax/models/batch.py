"""The prepared batch every compiled model call takes, and the one function that makes it from a raw dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import struct

from sgm_jax.runtime.buckets import TOKEN_KEYS, bucket_length, left_pad
from sgm_jax.runtime.errors import InputError


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
