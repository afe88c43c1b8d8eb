"""Neuron sites: modules whose output (and input, the `:in` site) can be gated and recorded by their HF name.

A site module runs `forward` between two optional per-neuron gates (`Gate`
variables, multiplied into its input and output), then an optional affine
transport of its output (`Transport`, Linear-AcT), then an optional edit of its
output (`edit`, a module whose arrays are `Steering` variables: a concept
dictionary, an SAE), and, only when a capture
configuration asks for it, sows what it saw and gave as `nnx.Intermediate` for
`nnx.capture` to collect. The capture request lives in a static attribute
(`record`) and gates are absent until set, so a plain model traces exactly as
one without sites would; gates are state, so new alpha values never recompile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

OUT, IN = "site_out", "site_in"
GATE_ATTRS = {OUT: "gate_out", IN: "gate_in"}


class Gate(nnx.Variable):
    """Per-neuron multipliers of a site (float32 `[width]`); its own type, so gates split apart from `nnx.Param`."""


class Transport(Gate):
    """Per-neuron affine map of a site's gated output (float32 `[4, width]`: scale, shift, low, high), applied
    where `low < a < high`; a `Gate` too, so it travels with the gates (split, stacked, swept)."""


def transported(y: jax.Array, transport: jax.Array) -> jax.Array:
    """`scale y + shift` where `low < y < high` (compared in float32), `y` elsewhere."""
    scale, shift, low, high = transport
    inside = (y.astype(jnp.float32) > low) & (y.astype(jnp.float32) < high)
    return jnp.where(inside, y * scale.astype(y.dtype) + shift.astype(y.dtype), y)


class Steering(nnx.Variable):
    """Arrays of an edit of a site's output (atoms, an SAE's weights, atom labels); apart from weights and gates."""


Fold = Callable[[np.ndarray], None]


def scale_axis(variable: nnx.Variable, alpha: np.ndarray, axis: int) -> None:
    """Multiply `variable` by `alpha` along `axis` (how a gate folds into a weight)."""
    shape = [1] * variable[...].ndim
    shape[axis] = -1
    variable.set_value(variable[...] * alpha.reshape(shape).astype(variable.dtype))


def add_to(variable: nnx.Variable, shift: np.ndarray) -> None:
    """Add `shift` to a vector variable (how a transport's shift folds into a bias)."""
    variable.set_value(variable[...] + shift.astype(variable.dtype))


def child(module: nnx.Module, dotted: str) -> nnx.Module:
    """The submodule at a dotted path relative to `module` (`"mlp.2"`: item 2 of the list `mlp`)."""
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


class ImageDomain:
    """Marker of a module whose sites see images, not tokens (a vision tower, a projector): their rows are
    images, pooled over each image's own positions."""


class Site(nnx.Module):
    """Base of every module that is a neuron site; subclasses define `forward(x, *args)`, and `site_widths`
    unless their declared Linears give it. A `forward` may return `(output, carry)`: the gates, the edit and
    capture act on the output, and the carry (a decoder layer's updated cache) passes through untouched.

    Composite sites say how their gates fold into weights (export): the output is that of the child Linear
    `output_linear`, the input feeds the child Linears `input_linears`, and the output of an activation child
    feeds the child Linear `activation_feeds` (dotted paths: `"mlp.2"`). Leaf layers override `folder`.
    """

    record: frozenset[str] = frozenset()
    keep: Callable[[jax.Array], jax.Array] | None = None
    """What a recording keeps of a value, set by a capture inside its trace: pooling it where it is made means
    no batch's activations at every site are alive at once (None keeps the value whole)."""
    gate_in: Gate | None = None
    gate_out: Gate | None = None
    transport_out: Transport | None = None
    """An affine map of the gated output (Linear-AcT, Mean-AcT); absent until set, like the gates."""
    edit: nnx.Module | None = None
    """`h -> f(h)` on the (gated) output at every position: a pure function of its own state (see steering/)."""
    edit_in: nnx.Module | None = None
    """`x -> f(x)` on the input before anything else sees it (a residual stream entering a decoder layer)."""
    output_linear: ClassVar[str | None] = None
    input_linears: ClassVar[tuple[str, ...]] = ()
    activation_feeds: ClassVar[str | None] = None

    def site_widths(self) -> tuple[int | None, int]:
        """`(input width, output width)` of the neurons this site exposes; input None when it has no `:in` site.

        By default read off the Linears the gates fold into (what `input_linears` take in, what `output_linear`
        gives out), so a site's widths and its folds cannot disagree; a site that declares fewer says its own.
        """
        if not (self.output_linear and self.input_linears):
            raise NotImplementedError(f"{type(self).__name__} lacks output_linear or input_linears: define site_widths")
        return child(self, self.input_linears[0]).site_widths()[0], child(self, self.output_linear).site_widths()[1]

    def folder(self, end: str) -> Fold | None:
        """How to fold a gate at `end` (OUT or IN) into this module's weights; None when no exact fold exists."""
        if end == OUT and self.output_linear:
            return child(self, self.output_linear).folder(OUT)
        if end == IN and self.input_linears:
            folds = [child(self, name).folder(IN) for name in self.input_linears]
            return lambda alpha: [fold(alpha) for fold in folds]
        return None

    def shift_folder(self) -> Fold | None:
        """How to fold a shift of this site's output into its weights (a bias to add it to); None without one."""
        return child(self, self.output_linear).shift_folder() if self.output_linear else None

    def __call__(self, x: jax.Array, *args, **kwargs):
        if self.edit_in is not None:
            x = self.edit_in(x)
        gate_in = None if self.gate_in is None else self.gate_in[...]
        gate_out = None if self.gate_out is None else self.gate_out[...]
        if IN in self.record:
            x = self._sow(IN, x, x if gate_in is None else x * gate_in.astype(x.dtype))
        out = self.gated_forward(x, gate_in, gate_out, *args, **kwargs)
        y = out[0] if isinstance(out, tuple) else out
        if self.transport_out is not None:
            y = transported(y, self.transport_out[...])
        if self.edit is not None:
            y = self.edit(y)
        if OUT in self.record:
            y = self._sow(OUT, y, y)
        return (y, out[1]) if isinstance(out, tuple) else y

    def _sow(self, end: str, x: jax.Array, value: jax.Array) -> jax.Array:
        """Sow what `keep` keeps of `value`; return `x` unchanged, but only once that is computed, so the compiler
        reduces `value` here rather than holding it to the end of the program."""
        if self.keep is None:
            self.sow(nnx.Intermediate, end, value)
            return x
        x, kept = jax.lax.optimization_barrier((x, self.keep(value)))
        self.sow(nnx.Intermediate, end, kept)
        return x

    def gated_forward(self, x: jax.Array, gate_in: jax.Array | None, gate_out: jax.Array | None, *args, **kwargs):
        """`forward` with the input and output multiplied by the gates; layers with a cheaper equivalent override it."""
        if gate_in is not None:
            x = x * gate_in.astype(x.dtype)
        out = self.forward(x, *args, **kwargs)
        if gate_out is None:
            return out
        if isinstance(out, tuple):
            return out[0] * gate_out.astype(out[0].dtype), out[1]
        return out * gate_out.astype(out.dtype)
