"""Interventions as gates in the module tree: `intervene` puts an intervention's alphas on a model's sites."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from sgm_jax.interventions.intervention import Intervention, transport_changes
from sgm_jax.models.copying import shallow_copy
from sgm_jax.models.site import GATE_ATTRS, OUT, Gate, Site, Transport
from sgm_jax.responses.sites import SiteError, nearest, site_refs
from sgm_jax.runtime.errors import InterventionError


def _site_modules(model: nnx.Module) -> dict[tuple, Site]:
    return {tuple(path): node for path, node in nnx.iter_graph(model) if isinstance(node, Site)}


def _check(model: nnx.Module, iv: Intervention):
    refs = site_refs(model)
    widths = [(s, "alpha", a.shape[0]) for s, a in iv.alphas.items()]
    widths += [(s, "its transport", t.shape[1]) for s, t in iv.transports.items()]
    for site, what, width in widths:
        if site not in refs:
            raise SiteError(f"intervention site {site!r} is not a site of this model; nearest: {nearest(site, refs)}")
        if width != refs[site].width:
            raise InterventionError(
                f"intervention site {site!r}: {what} has {width} values, the site has {refs[site].width} neurons"
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
    for site in intervention.sites:
        if refs[site].end == OUT and modules[refs[site].path].transport_out is not None:
            raise InterventionError(
                f"intervention site {site!r} already carries a transport (Linear-AcT, Mean-AcT), and nothing can "
                "stack onto one; compose the interventions with the transport last instead"
            )
    for site, alpha in intervention.alphas.items():
        if not keep_identity and (alpha == 1).all():
            continue
        ref = refs[site]
        node, attr = modules[ref.path], GATE_ATTRS[ref.end]
        current = getattr(node, attr)
        alpha = np.asarray(alpha, np.float32)  # multiplied on the host: an eager op would compile per width
        value = jax.device_put(alpha if current is None else np.asarray(current[...]) * alpha)
        setattr(node, attr, Gate(value))
    for site, transport in intervention.transports.items():
        node = modules[refs[site].path]
        if refs[site].end != OUT:
            raise InterventionError(f"intervention site {site!r}: a transport acts on a site's output")
        if not keep_identity and not transport_changes(transport).any():
            continue
        node.transport_out = Transport(jax.device_put(np.asarray(transport, np.float32)))
    return gated
