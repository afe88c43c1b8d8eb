"""Site names: HF module paths (`...mlp.up_proj`), `:in` for a module's input, glob patterns for many.

`list_sites(model)` is the source of truth: every `Site` module in the tree, named
exactly as `dict(hf_model.named_modules())` names it in transformers 5.x, with
the width of its neurons. Sites inside a module marked `ImageDomain` (a vision
tower, a projector) live in the image domain (their rows are images, pooled over
the image's positions); all others live in the token domain.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Iterable

from flax import nnx

from sgm_jax.models.site import IN, OUT, ImageDomain, Site, child
from sgm_jax.runtime.errors import SgmJaxError

INPUT_SUFFIX = ":in"


class SiteError(SgmJaxError, KeyError):
    """A site name or pattern that names no site of the model."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class SiteRef:
    """One concrete site: its name, the module path in the NNX tree, which end (output/input), its width, and
    whether it sees images rather than tokens."""

    name: str
    path: tuple
    end: str
    width: int
    image_domain: bool = False


def _tree_order(path: tuple) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path)


def site_refs(model: nnx.Module) -> dict[str, SiteRef]:
    """Every site of `model` by name, parents before children, layers in numeric order, outputs before `:in`."""
    refs = {}
    nodes = [(tuple(path), node) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)]
    image_roots = [path for path, node in nodes if isinstance(node, ImageDomain)]
    modules = [(path, node) for path, node in nodes if isinstance(node, Site) and path]
    for path, node in sorted(modules, key=lambda item: _tree_order(item[0])):
        name = ".".join(str(p) for p in path)
        image = any(path[: len(root)] == root for root in image_roots)
        width_in, width_out = node.site_widths()
        refs[name] = SiteRef(name, path, OUT, int(width_out), image)
        if width_in is not None:
            refs[name + INPUT_SUFFIX] = SiteRef(name + INPUT_SUFFIX, path, IN, int(width_in), image)
    return refs


def list_sites(model: nnx.Module) -> dict[str, int]:
    """Site name -> number of neurons, for every site of `model`."""
    return {name: ref.width for name, ref in site_refs(model).items()}


def resolve(model: nnx.Module, patterns: str | Iterable[str]) -> list[SiteRef]:
    """Concrete sites for names or glob patterns (`*` matches any run of characters), in tree order.

    A pattern that matches nothing is an error listing the nearest real site names.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    refs = site_refs(model)
    chosen: set[str] = set()
    for pattern in patterns:
        matched = (
            fnmatch.filter(refs, pattern)
            if any(c in pattern for c in "*?[")
            else ([pattern] if pattern in refs else [])
        )
        if not matched:
            raise SiteError(f"site {pattern!r} matches no site of this model; nearest: {nearest(pattern, refs)}")
        chosen.update(matched)
    return [ref for name, ref in refs.items() if name in chosen]


def nearest(pattern: str, names: Iterable[str], n: int = 5) -> list[str]:
    names = list(names)
    close = difflib.get_close_matches(pattern, names, n=n, cutoff=0.0)
    return close or names[:n]


def default_sites(model: nnx.Module) -> list[str]:
    """SGM's sites (as in ml-aura-vl): the outputs of the three MLP projections in every decoder layer."""
    return [f"{model.decoder_layers}.*.mlp.{name}" for name in ("gate_proj", "up_proj", "down_proj")]


WRITERS = ("self_attn", "cross_attn", "mlp")
"""The children of a decoder layer whose outputs are added to the residual stream (transformers' names in every
family)."""


def stream_writers(model: nnx.Module) -> list[str]:
    """The sites whose outputs the decoder adds to its residual stream: each layer's attention and MLP."""
    layers, refs = child(model, model.decoder_layers), site_refs(model)
    names = [f"{model.decoder_layers}.{i}.{w}" for i, layer in enumerate(layers) for w in WRITERS if hasattr(layer, w)]
    return [name for name in names if name in refs]
