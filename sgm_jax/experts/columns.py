"""Per-neuron statistics in chunks of columns: one compiled program for every chunk, every core busy.

A `[samples, neurons]` matrix of responses is too large to send through a device whole at 7B; each statistic
here (AUROC, a transport map) is a function of one column at a time, so the columns go in chunks padded to one
width (one compile serves them all) across a few host threads (XLA:CPU sorts on one core), and with a mesh each
chunk's columns are split over its devices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CHUNK_ELEMENTS = 1 << 19  # responses per chunk: a few MB of sort keys, cache-sized on CPU
_THREADS = min(8, os.cpu_count() or 1)


def map_columns(
    fn: Callable[..., tuple[jax.Array, ...]],
    matrices: Sequence[np.ndarray],
    *,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, ...]:
    """`fn(*blocks)` over chunks of the columns the `matrices` share (each `[its rows, neurons]`), run with x64
    on; `fn` returns arrays whose last axis is the chunk's columns, concatenated back here."""
    n_neurons = matrices[0].shape[1]
    rows = sum(m.shape[0] for m in matrices)
    devices = 1 if mesh is None else mesh.size
    width = min(chunk_size or max(1, CHUNK_ELEMENTS // max(rows, 1)), n_neurons)
    width = -(-width // devices) * devices
    columns = None if mesh is None else NamedSharding(mesh, PartitionSpec(None, mesh.axis_names))

    def one_chunk(start: int) -> list[np.ndarray]:
        blocks = []
        for matrix in matrices:
            block = matrix[:, start : start + width]
            if block.shape[1] < width:
                block = np.pad(block, ((0, 0), (0, width - block.shape[1])))
            blocks.append(block)
        taken = min(width, n_neurons - start)
        with jax.enable_x64(True):
            if columns is not None:
                blocks = [jax.device_put(b, columns) for b in blocks]
            return [np.asarray(out)[..., :taken] for out in fn(*blocks)]

    with ThreadPoolExecutor(_THREADS) as pool:
        chunks = list(pool.map(one_chunk, range(0, n_neurons, width)))
    return tuple(np.concatenate(parts, axis=-1) for parts in zip(*chunks))
