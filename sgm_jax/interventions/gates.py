"""Interventions as gates in the module tree: `intervene`, and K interventions under one compile (`sweep`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.errors import InterventionError
from sgm_jax.interventions.intervention import Intervention
from sgm_jax.models.compiled import compiled
from sgm_jax.models.copying import shallow_copy
from sgm_jax.models.site import GATE_ATTRS, Gate, Site
from sgm_jax.sites import SiteError, nearest, site_refs


def _site_modules(model: nnx.Module) -> dict[tuple, Site]:
    return {tuple(path): node for path, node in nnx.iter_graph(model) if isinstance(node, Site)}


def _check(model: nnx.Module, iv: Intervention):
    refs = site_refs(model)
    for site, alpha in iv.alphas.items():
        if site not in refs:
            raise SiteError(f"intervention site {site!r} is not a site of this model; nearest: {nearest(site, refs)}")
        if alpha.shape != (refs[site].width,):
            raise InterventionError(
                f"intervention site {site!r}: alpha has {alpha.shape[0]} values, the site has "
                f"{refs[site].width} neurons"
            )
    return refs


def intervene(model: nnx.Module, intervention: Intervention, *, keep_identity: bool = False) -> nnx.Module:
    """A model whose sites are multiplied by the intervention's alphas; `model` itself is left as it was.

    The weights are shared, not copied (bit-identical `nnx.Param` state). Gates the model
    already has are multiplied, so interventions stack. A site whose alphas are all 1 gets
    no gate unless `keep_identity`: XLA fuses a multiply with its neighbours and may then
    round a neighbour's multiply-adds differently, so only leaving it out makes an all-ones
    intervention compute bitwise what the plain model computes (and costs nothing).
    """
    refs = _check(model, intervention)
    gated = shallow_copy(model)
    modules = _site_modules(gated)
    for site, alpha in intervention.alphas.items():
        if not keep_identity and (alpha == 1).all():
            continue
        ref = refs[site]
        node, attr = modules[ref.path], GATE_ATTRS[ref.end]
        current = getattr(node, attr)
        value = jnp.asarray(alpha) if current is None else current[...] * jnp.asarray(alpha)
        setattr(node, attr, Gate(value))
    return gated


def _completed(iv: Intervention, widths: dict[str, int]) -> Intervention:
    """The intervention with alpha 1 at every site of `widths` it does not touch (so all share one structure)."""
    return Intervention({s: iv.alphas.get(s, np.ones(w, np.float32)) for s, w in widths.items()}, iv.metadata)


def stacked_gates(model: nnx.Module, interventions: Sequence[Intervention]):
    """`(graphdef, gates [K, ...], rest)`: K interventions as one batch of gate states over shared weights."""
    if not interventions:
        raise InterventionError("sweep needs at least one intervention")
    refs = site_refs(model)
    for iv in interventions:
        _check(model, iv)
    widths = {s: refs[s].width for iv in interventions for s in iv.sites}
    gated = [intervene(model, _completed(iv, widths), keep_identity=True) for iv in interventions]
    graphdef, _, rest = nnx.split(gated[0], Gate, ...)
    gates = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(g, Gate) for g in gated])
    return graphdef, gates, rest


def sweep(model: nnx.Module, interventions: Sequence[Intervention], fn: Callable[..., Any], *args) -> Any:
    """`fn(gated_model, *args)` for each intervention, as one `jax.vmap` over the gate state under one compile.

    Every leaf of the result gets a leading axis of length K. `fn` must be traceable, and is part of
    the compile's key: pass the same function object (not a fresh lambda) to reuse the compile.
    """
    graphdef, gates, rest = stacked_gates(model, interventions)
    return _swept(gates, rest, args, graphdef=graphdef, fn=fn)


@compiled(static_argnames=("graphdef", "fn"))
def _swept(gates, rest, args, *, graphdef, fn):
    return jax.vmap(lambda g: fn(nnx.merge(graphdef, g, rest), *args))(gates)
