"""Linear-AcT and Mean-AcT (Rodriguez et al., ICLR 2025): per-neuron transport maps from one set of responses
(the source, e.g. toxic) to another (the target), as `[4, neurons]` arrays: scale, shift, low, high.

- Linear-AcT: each neuron's source and target responses sorted (the 1-D optimal transport plan pairs them in
  order), the least-squares line `target ~ scale * source + shift` through the pairs, applied only strictly
  inside the source's range (apple/ml-act's `linear_ot`, support `q_0_100`). With as many source as target
  samples the pairs are the sorted values themselves, exactly as ml-act's `solve_ot_1d`; with different counts
  each source quantile is paired with the target's quantile at the same level (linear interpolation), where
  ml-act would drop samples to balance the sets.
- Mean-AcT: `a + mean(target) - mean(source)` everywhere, on neurons whose responses vary in both sets (standard
  deviation above 1e-4, ml-act's `mean_ot`).

The sums run in float64 (as ml-act's), one sort per column, in chunks of columns (`sgm_jax.experts.columns`).
ml-act adds 1e-8 noise to the source before the fit so that a constant neuron does not divide by zero; here a
neuron whose source responses are all equal keeps the identity instead (its support, a single value, is empty).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sgm_jax.experts.auroc import NonFiniteError
from sgm_jax.experts.columns import map_columns
from sgm_jax.experts.scores import labels_of, per_site
from sgm_jax.responses.store import ResponseStore
from sgm_jax.runtime.errors import InputError

METHODS = ("linear-act", "mean-act")
STD_EPS = 1e-4


def transport_maps(
    source, target, method: str = "linear-act", *, chunk_size: int | None = None, mesh: Mesh | None = None
) -> np.ndarray:
    """The `[4, neurons]` float32 transport (scale, shift, low, high) of `method` from the columns of `source`
    `[n_source, neurons]` to those of `target` `[n_target, neurons]`."""
    if method not in METHODS:
        raise InputError(f"transport method {method!r} is not one of {list(METHODS)}")
    source, target = np.asarray(source), np.asarray(target)
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise InputError(
            f"source and target must be [samples, neurons] with the same neurons, got {source.shape} and {target.shape}"
        )
    if min(len(source), len(target)) < 2:
        raise InputError(f"a transport needs 2 source and 2 target samples at least, got {len(source)}, {len(target)}")
    for name, m in (("source", source), ("target", target)):
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(m.astype(np.float32))
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise NonFiniteError(f"{name} responses hold NaN or inf (first at row {row}, column {column})")
    fit = _linear_fit if method == "linear-act" else _mean_fit
    return np.stack(map_columns(fit, [source, target], chunk_size=chunk_size, mesh=mesh)).astype(np.float32)


@jax.jit
def _linear_fit(source: jax.Array, target: jax.Array) -> tuple[jax.Array, ...]:
    x = jnp.sort(source.astype(jnp.float32), axis=0).astype(jnp.float64)
    y = jnp.sort(target.astype(jnp.float32), axis=0).astype(jnp.float64)
    n, m = x.shape[0], y.shape[0]
    if m != n:  # the target's quantiles at the source's levels (i + 1/2) / n
        position = jnp.clip((jnp.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
        below = jnp.floor(position).astype(jnp.int32)
        above = jnp.minimum(below + 1, m - 1)
        weight = (position - below)[:, None]
        y = y[below] * (1 - weight) + y[above] * weight
    x_bar, y_bar = x - x.mean(0), y - y.mean(0)
    spread = jnp.sum(x_bar * x_bar, axis=0)
    constant = spread == 0
    scale = jnp.where(constant, 1.0, jnp.maximum(jnp.sum(x_bar * y_bar, axis=0), 0) / jnp.where(constant, 1, spread))
    shift = jnp.where(constant, 0.0, y.mean(0) - scale * x.mean(0))
    return scale, shift, x[0], x[-1]


@jax.jit
def _mean_fit(source: jax.Array, target: jax.Array) -> tuple[jax.Array, ...]:
    x, y = source.astype(jnp.float64), target.astype(jnp.float64)
    varies = (jnp.std(x, axis=0, ddof=1) > STD_EPS) & (jnp.std(y, axis=0, ddof=1) > STD_EPS)
    shift = jnp.where(varies, y.mean(0) - x.mean(0), 0.0)
    ones = jnp.ones_like(shift)
    return ones, shift, -jnp.inf * ones, jnp.inf * ones


def transport_store(
    store: ResponseStore,
    method: str = "linear-act",
    *,
    source_label: int = 1,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """`{site: [4, width]}` transports of every site of a complete store, from its samples labelled
    `source_label` (1: the behaviour to remove) to the others."""
    labels = labels_of(store, "a transport")
    source = labels == source_label
    if source.all() or not source.any():
        raise InputError(f"store {store.directory}: a transport needs samples of both labels")
    return per_site(
        store,
        lambda r: transport_maps(r[source], r[~source], method, mesh=mesh),
        desc=method,
        progress=progress,
    )
