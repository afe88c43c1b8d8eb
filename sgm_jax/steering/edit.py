"""Edits of the residual stream: `steer(model, {site: edit})` puts an edit `h -> f(h)` on a site's output (or on
its input, `SITE:in`: the stream entering a decoder layer).

An edit is an NNX module whose arrays are `Steering` variables, so it is state like a gate: it rides into
every jitted forward, prefill and decode alike, at every position, and new atoms or labels of the same shapes
never recompile. The weights stay bit-identical and shared; the caller's model is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from sgm_jax.models.copying import shallow_copy
from sgm_jax.models.site import IN, OUT, Site
from sgm_jax.responses.sites import SiteError, nearest, site_refs
from sgm_jax.runtime.errors import OptionError


class ResidualEdit(nnx.Module):
    """Base of an edit of a site's output `[..., width]`: `__call__(h)` is a pure function of `h` and the edit's
    `Steering` state; `describe()` says what it is (reports and answer caches key on it)."""

    width: int

    def __call__(self, h: jax.Array) -> jax.Array:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


def steer(model: nnx.Module, edits: Mapping[str, ResidualEdit]) -> nnx.Module:
    """A model whose named sites' outputs (or, for `SITE:in`, inputs) pass through their edits."""
    refs = site_refs(model)
    for site, edit in edits.items():
        if site not in refs:
            raise SiteError(f"steering site {site!r} is not a site of this model; nearest: {nearest(site, refs)}")
        if edit.width != refs[site].width:
            raise OptionError(
                f"steering site {site!r} is {refs[site].width} wide, the edit is for width {edit.width} "
                "(made for another model or site)"
            )
    steered = shallow_copy(model)
    nodes = {tuple(path): node for path, node in nnx.iter_graph(steered) if isinstance(node, Site)}
    for site, edit in edits.items():
        node, attr = nodes[refs[site].path], "edit" if refs[site].end == OUT else "edit_in"
        if getattr(node, attr) is not None:
            raise OptionError(f"steering site {site!r} already carries an edit; one edit per site")
        setattr(node, attr, edit)
    return steered


def edits_of(model: nnx.Module) -> dict[str, ResidualEdit]:
    """The edits a model carries, by site."""
    refs = {(ref.path, ref.end): name for name, ref in site_refs(model).items()}
    found = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Site):
            for end, attr in ((OUT, "edit"), (IN, "edit_in")):
                if getattr(node, attr) is not None and (tuple(path), end) in refs:
                    found[refs[(tuple(path), end)]] = getattr(node, attr)
    return found
