"""Neuron sites: modules whose output (and input, the `:in` site) can be gated and recorded by their HF name.

A site module runs `forward` between two optional per-neuron gates (`Gate`
variables, multiplied into its input and output) and, only when a capture
configuration asks for it, sows what it saw and gave as `nnx.Intermediate` for
`nnx.capture` to collect. The capture request lives in a static attribute
(`record`) and gates are absent until set, so a plain model traces exactly as
one without sites would; gates are state, so new alpha values never recompile.
"""

from __future__ import annotations

import jax
from flax import nnx

OUT, IN = "site_out", "site_in"
GATE_ATTRS = {OUT: "gate_out", IN: "gate_in"}


class Gate(nnx.Variable):
    """Per-neuron multipliers of a site (float32 `[width]`); its own type, so gates split apart from `nnx.Param`."""


class Site(nnx.Module):
    """Base of every module that is a neuron site; subclasses define `forward(x, *args)` and `site_widths`."""

    record: frozenset[str] = frozenset()
    gate_in: Gate | None = None
    gate_out: Gate | None = None

    def site_widths(self) -> tuple[int | None, int]:
        """`(input width, output width)` of the neurons this site exposes; input None when it has no `:in` site."""
        raise NotImplementedError

    def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
        gate_in = None if self.gate_in is None else self.gate_in[...]
        gate_out = None if self.gate_out is None else self.gate_out[...]
        if IN in self.record:
            self.sow(nnx.Intermediate, IN, x if gate_in is None else x * gate_in.astype(x.dtype))
        y = self.gated_forward(x, gate_in, gate_out, *args, **kwargs)
        if OUT in self.record:
            self.sow(nnx.Intermediate, OUT, y)
        return y

    def gated_forward(self, x: jax.Array, gate_in: jax.Array | None, gate_out: jax.Array | None, *args,
                      **kwargs) -> jax.Array:
        """`forward` with the input and output multiplied by the gates; layers with a cheaper equivalent override it."""
        if gate_in is not None:
            x = x * gate_in.astype(x.dtype)
        y = self.forward(x, *args, **kwargs)
        return y if gate_out is None else y * gate_out.astype(y.dtype)
