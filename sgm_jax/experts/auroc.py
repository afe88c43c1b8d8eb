"""Exact per-neuron AUROC: how well each neuron's response tells the two classes apart.

AUROC of a column = U / (n1 n0), the Mann-Whitney U over all (positive, negative)
pairs: 1 where the positive responds more, 1/2 on a tie. That is exactly what
`sklearn.metrics.roc_auc_score` gives, computed here for millions of columns with
one integer sort per column:

- each float32 value (-0.0 made +0.0, so the zeros tie) becomes the int32 whose
  order is the float order, and the label goes into the low bit of an int64, so
  one single-operand sort (XLA's fastest) orders a column by value and label;
- a tie group spanning sorted positions start..end gives each member the midrank
  (start + end) / 2 + 1 (a cumulative max and a reversed cumulative min find the
  ends), and U = R1 - n1 (n1 + 1) / 2 with R1 the positives' rank sum, kept as the
  integer 2 R1 until the final division.

Columns go in chunks (`sgm_jax.experts.columns`): one compiled program for all of them,
every core busy, and with a mesh each chunk's columns split over its devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sgm_jax.experts.columns import map_columns
from sgm_jax.runtime.errors import InputError, SgmJaxError

_SHOWN = 5  # bad columns / rows named in an error


class NonFiniteError(SgmJaxError, ValueError):
    """Responses hold NaN or inf; the message names the columns and rows."""


def auroc(responses, labels, *, chunk_size: int | None = None, mesh: Mesh | None = None) -> np.ndarray:
    """AUROC `[neurons]` (float32) of each column of `responses` `[samples, neurons]` against 0/1 `labels`.

    Values are compared as float32. `chunk_size` is how many columns go through the
    device at once; `mesh` spreads each chunk's columns over all of its devices.
    """
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size must be a positive number of neurons, got {chunk_size}")
    responses = np.asarray(responses)
    labels = _check_inputs(np.asarray(labels), responses.shape)
    n_samples, n_neurons = responses.shape
    n1 = int(labels.sum())
    n0 = n_samples - n1
    if n1 == 0 or n0 == 0:
        raise InputError(
            f"AUROC is undefined: labels hold only class {int(n1 > 0)}"
            if n_samples
            else "AUROC is undefined: there are no samples"
        )
    if n_neurons == 0:
        return np.zeros(0, np.float32)

    if mesh is not None:
        labels = jax.device_put(labels, NamedSharding(mesh, PartitionSpec()))
    twice_r1, finite = map_columns(
        lambda block: _twice_rank_sum(block, labels), [responses], chunk_size=chunk_size, mesh=mesh
    )
    if not finite.all():
        raise NonFiniteError(_non_finite_message(responses, np.flatnonzero(~finite)))
    return ((twice_r1 - n1 * (n1 + 1)) / (2.0 * n1 * n0)).astype(np.float32)


@jax.jit
def _twice_rank_sum(block: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """2 R1 (int64) and an all-finite flag for each column of a `[samples, width]` block; needs x64 on."""
    x = block.astype(jnp.float32)
    finite = jnp.all(jnp.isfinite(x), axis=0)
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.int32)
    key = jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    packed = jnp.sort(key.T.astype(jnp.int64) * 2 + labels.astype(jnp.int64), axis=-1)
    value, positive = packed >> 1, (packed & 1) == 1
    n = value.shape[1]
    position = jnp.arange(n, dtype=jnp.int32)
    changes = value[:, 1:] != value[:, :-1]
    edge = jnp.ones_like(changes[:, :1])
    start = jax.lax.cummax(jnp.where(jnp.concatenate([edge, changes], axis=1), position, 0), axis=1)
    end = jax.lax.cummin(jnp.where(jnp.concatenate([changes, edge], axis=1), position, n - 1), axis=1, reverse=True)
    return jnp.sum(jnp.where(positive, start + end + 2, 0), axis=1, dtype=jnp.int64), finite


def _check_inputs(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) != 2:
        raise InputError(f"responses must be 2-D [samples, neurons], got shape {shape}")
    if labels.ndim != 1:
        raise InputError(f"labels must be 1-D [samples], got shape {labels.shape}")
    if len(labels) != shape[0]:
        raise InputError(f"responses has {shape[0]} samples (rows) but labels has {len(labels)}")
    other = labels[(labels != 0) & (labels != 1)]
    if other.size:
        raise InputError(f"labels must be 0/1 (or bool), got {np.unique(other)[:_SHOWN].tolist()}")
    return labels.astype(np.int32)


def _non_finite_message(responses: np.ndarray, columns: np.ndarray) -> str:
    parts = []
    for column in columns[:_SHOWN]:
        with np.errstate(over="ignore"):
            rows = np.flatnonzero(~np.isfinite(responses[:, column].astype(np.float32)))
        parts.append(f"column {column} rows {rows[:_SHOWN].tolist()}{' ...' if len(rows) > _SHOWN else ''}")
    more = f" and {len(columns) - _SHOWN} more columns" if len(columns) > _SHOWN else ""
    return f"responses hold NaN or inf (as float32), AUROC needs finite values: {'; '.join(parts)}{more}"
