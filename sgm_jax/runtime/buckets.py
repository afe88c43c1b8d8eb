"""Padded shapes: bucketed lengths and row counts, and left padding to them.

Every compiled program sees a handful of shapes, whatever the data: lengths are rounded up to a bucket (four per
octave), partial batches to a power of two, and rows are left-padded (decoding continues at the right edge).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

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
