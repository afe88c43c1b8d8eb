"""K interventions under one compile: a `jax.vmap` over stacked gate states, in chunks, keyed on what computes.

A sweep fixes which sites carry a gate (every site any of its interventions touches, identity gates kept, so
the graph never depends on which alphas happen to be 1) and fills `[K, width]` gate arrays straight from the
alphas: no gated model per setting. The function is lifted (`sgm_jax.lifted`): its arrays are arguments and its
code and static values the compile key, so a fresh lambda over new inputs of the same shapes reuses the
compile. Settings go through in chunks of a fixed size (the last one padded with identity settings), so any
number of them runs under one compile with device memory bounded by the chunk.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from sgm_jax.interventions.gates import intervene
from sgm_jax.interventions.intervention import Intervention, identity_transport
from sgm_jax.interventions.lifted import lift
from sgm_jax.models.compiled import compiled
from sgm_jax.models.site import GATE_ATTRS, Gate, Transport
from sgm_jax.responses.sites import SiteError, nearest, site_refs
from sgm_jax.runtime.errors import InterventionError

DEFAULT_CHUNK = 64


class GateStack:
    """A model with a gate at each of `sites` (the model's own gate there, else ones) and an identity transport at
    each of `transported`, and the gate states of K interventions over it built from their alphas and transports
    alone."""

    def __init__(self, model: nnx.Module, sites: Sequence[str], transported: Sequence[str] = ()):
        refs = site_refs(model)
        unknown = [s for s in [*sites, *transported] if s not in refs]
        if unknown:
            raise SiteError(
                f"sweep site {unknown[0]!r} is not a site of this model; nearest: {nearest(unknown[0], refs)}"
            )
        self.widths = {s: refs[s].width for s in [*sites, *transported]}
        self.transported = set(transported)
        frame = intervene(
            model,
            Intervention(
                {s: np.ones(refs[s].width, np.float32) for s in sites},
                transports={s: identity_transport(refs[s].width) for s in transported},
            ),
            keep_identity=True,
        )
        self.graphdef, gates, self.rest = nnx.split(frame, Gate, ...)
        # Each gate variable with its value on the host, read once: the base every setting's alphas multiply.
        self._flat = [
            (path, variable, np.asarray(variable[...], np.float32)) for path, variable in nnx.to_flat_state(gates)
        ]
        self._site_at = {refs[s].path + (GATE_ATTRS[refs[s].end],): s for s in sites}
        self._site_at.update({refs[s].path + ("transport_out",): s for s in transported})
        self._sites = set(sites)

    def check(self, iv: Intervention) -> None:
        for site, alpha in iv.alphas.items():
            if site not in self._sites:
                raise InterventionError(f"intervention site {site!r} is not one of the {len(self._sites)} swept sites")
            if alpha.shape != (self.widths[site],):
                raise InterventionError(
                    f"intervention site {site!r}: alpha has {alpha.shape[0]} values, the site has "
                    f"{self.widths[site]} neurons"
                )
        for site, transport in iv.transports.items():
            if site not in self.transported or transport.shape[1] != self.widths[site]:
                raise InterventionError(
                    f"intervention site {site!r}: its transport is not one of this sweep's "
                    f"{len(self.transported)} transported sites of that width"
                )

    def model(self, intervention: Intervention) -> nnx.Module:
        """The model under one setting, with this stack's gates (so every setting's model shares one compile)."""
        self.check(intervention)
        return nnx.merge(self.graphdef, jax.tree.map(lambda x: x[0], self.state([intervention])), self.rest)

    def state(self, interventions: Sequence[Intervention]) -> nnx.State:
        """Gate state with a leading axis of `len(interventions)`: the model's gate times each one's alphas."""
        leaves = []
        for path, variable, base in self._flat:
            site = self._site_at.get(tuple(path))
            if isinstance(variable, Transport):  # the frame's identity, or the setting's own
                rows = [iv.transports.get(site, base) for iv in interventions]
            else:
                rows = [base * iv.alphas[site] if site in iv.alphas else base for iv in interventions]
            leaves.append((path, variable.replace(jax.device_put(np.stack(rows)))))
        return nnx.from_flat_state(leaves)

    def padded_state(self, interventions: Sequence[Intervention], size: int) -> nnx.State:
        """`state` of the interventions padded with identity settings to `size` (one shape for every chunk)."""
        for iv in interventions:
            self.check(iv)
        return self.state(list(interventions) + [Intervention({})] * (size - len(interventions)))

    def run(self, gates: nnx.State, fn: Callable[..., Any], *args) -> Any:
        """`fn(gated_model, *args)` under each gate state of `gates` (device arrays, stacked on axis 0)."""
        key, lifted = lift(fn)
        return _swept(gates, self.rest, lifted, args, graphdef=self.graphdef, key=key)


def swept_sites(model: nnx.Module, interventions: Iterable[Intervention]) -> list[str]:
    """Every site any of `interventions` gates, in the model's site order."""
    touched = {s for iv in interventions for s in iv.alphas}
    return [s for s in site_refs(model) if s in touched]


def transported_sites(model: nnx.Module, interventions: Iterable[Intervention]) -> list[str]:
    """Every site any of `interventions` transports, in the model's site order."""
    touched = {s for iv in interventions for s in iv.transports}
    return [s for s in site_refs(model) if s in touched]


def sweep(
    model: nnx.Module,
    interventions: Iterable[Intervention],
    fn: Callable[..., Any],
    *args,
    sites: Sequence[str] | None = None,
    transported: Sequence[str] = (),
    chunk_size: int | None = DEFAULT_CHUNK,
) -> Any:
    """`fn(gated_model, *args)` for each intervention, stacked on a leading axis of length K (host arrays).

    Compiled once per model structure, function code and static values, swept sites, chunk size and argument
    shapes. `interventions` may be a lazy iterable (K settings of a 7B model need not sit in memory at once)
    when `sites` names every site they gate and `transported` every site they transport; `chunk_size` None runs
    all K as one chunk. A function that loops until a condition of its own (a decoder) is better vmapped inside
    its loop: `sgm_jax.decoding.generate.decode_swept`.
    """
    if chunk_size is not None and chunk_size < 1:
        raise InterventionError(f"chunk_size must be >= 1, got {chunk_size}")
    if sites is None:
        interventions = list(interventions)
        sites, transported = swept_sites(model, interventions), transported_sites(model, interventions)
    stack = GateStack(model, sites, transported)
    source = iter(interventions)
    outs = []
    while part := list(itertools.islice(source, chunk_size)) if chunk_size else list(source):
        out = stack.run(stack.padded_state(part, chunk_size or len(part)), fn, *args)
        taken = len(part)
        outs.append(jax.tree.map(lambda x: np.asarray(x)[:taken], out))  # noqa: B023 (used at once)
        if not chunk_size:
            break
    if not outs:
        raise InterventionError("sweep needs at least one intervention")
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


@compiled(static_argnames=("graphdef", "key"))
def _swept(gates, rest, lifted, args, *, graphdef, key):
    fn = key.rebuild(lifted)
    return jax.vmap(lambda g: fn(nnx.merge(graphdef, g, rest), *args))(gates)
