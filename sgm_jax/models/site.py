"""Neuron sites: modules whose output (and input, the `:in` site) can be recorded by their HF name.

A site module runs `forward` and, only when a capture configuration asks for
it, sows its input and/or output as `nnx.Intermediate` for `nnx.capture` to
collect. The request lives in a static attribute (`record`), so a model that
records nothing traces exactly as the plain model does.
"""

from __future__ import annotations

import jax
from flax import nnx

OUT, IN = "site_out", "site_in"


class Site(nnx.Module):
    """Base of every module that is a neuron site; subclasses define `forward(x, *args)` and `site_widths`."""

    record: frozenset[str] = frozenset()

    def site_widths(self) -> tuple[int | None, int]:
        """`(input width, output width)` of the neurons this site exposes; input None when it has no `:in` site."""
        raise NotImplementedError

    def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
        if IN in self.record:
            self.sow(nnx.Intermediate, IN, x)
        y = self.forward(x, *args, **kwargs)
        if OUT in self.record:
            self.sow(nnx.Intermediate, OUT, y)
        return y
