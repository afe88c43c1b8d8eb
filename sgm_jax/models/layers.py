"""Leaf layers shared by the ports, each declaring how its parameters map to HF tensors.

Every layer names its parameters with logical axes (see `sgm_jax.weights.sharding`) and
carries `hf_params`: for each parameter attribute, the suffix of the matching
Hugging Face tensor and the axis permutation that turns the torch layout into
ours (`flax = np.transpose(torch, perm)`). The converter reads only these
declarations, so a module tree that mirrors the HF names is its own key map.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from sgm_jax.models.site import OUT, Fold, Site, add_to, scale_axis

Axes = tuple[str | None, ...]

_INIT_STD = 0.02


def param(rngs: nnx.Rngs, shape: tuple[int, ...], dtype, axes: Axes, init: str = "normal") -> nnx.Param:
    """A parameter tagged with logical axis names, initialised as HF does (normal 0.02, zero bias, unit scale)."""
    if init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = (_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class Linear(Site):
    """`y = x @ kernel + bias`, kernel `[in, out]` (torch stores the transpose)."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"kernel": ("weight", (1, 0)), "bias": ("bias", (0,))}

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool,
        axes: tuple[str | None, str | None],
        dtype,
        rngs: nnx.Rngs,
    ):
        self.kernel = param(rngs, (in_features, out_features), dtype, axes)
        self.bias = param(rngs, (out_features,), dtype, axes[1:], init="zeros") if use_bias else None

    def site_widths(self) -> tuple[int, int]:
        return self.kernel.shape

    def folder(self, end: str) -> Fold:
        """An output gate scales the kernel's columns and the bias; an input gate the kernel's rows."""

        def fold(alpha):
            scale_axis(self.kernel, alpha, 1 if end == OUT else 0)
            if end == OUT and self.bias is not None:
                scale_axis(self.bias, alpha, 0)

        return fold

    def shift_folder(self) -> Fold | None:
        return None if self.bias is None else lambda shift: add_to(self.bias, shift)

    def forward(self, x: jax.Array) -> jax.Array:
        return self.gated_forward(x, None, None)

    def gated_forward(self, x: jax.Array, gate_in: jax.Array | None, gate_out: jax.Array | None) -> jax.Array:
        """Gates scale whichever is smaller, the activations or the kernel: on a long prompt scaling the
        kernel's rows (input gate) or columns and bias (output gate) costs less than a pass over the
        activations, in a decode step the activations are the smaller. Both are exact up to rounding."""
        kernel = self.kernel[...]
        bias = None if self.bias is None else self.bias[...]
        rows = x.size // x.shape[-1]
        if gate_in is not None:
            if rows > kernel.shape[1]:
                kernel = kernel * gate_in.astype(kernel.dtype)[:, None]
            else:
                x = x * gate_in.astype(x.dtype)
        scale_output = gate_out is not None and rows <= kernel.shape[0]
        if gate_out is not None and not scale_output:
            kernel = kernel * gate_out.astype(kernel.dtype)
            bias = None if bias is None else bias * gate_out.astype(bias.dtype)
        y = x @ kernel
        if bias is not None:
            y = y + bias
        return y * gate_out.astype(y.dtype) if scale_output else y


class Embedding(Site):
    """Token (or position) lookup table `[num, features]`; `attend` is the tied output projection."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"embedding": ("weight", (0, 1))}

    def __init__(
        self, num_embeddings: int, features: int, *, axes: tuple[str | None, str | None], dtype, rngs: nnx.Rngs
    ):
        self.embedding = param(rngs, (num_embeddings, features), dtype, axes)

    def site_widths(self) -> tuple[None, int]:
        return None, self.embedding.shape[1]

    def folder(self, end: str) -> Fold | None:
        """Scales the table's features (the caller refuses this when the table is also the tied LM head)."""
        return (lambda alpha: scale_axis(self.embedding, alpha, 1)) if end == OUT else None

    def forward(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0, mode="clip")

    def attend(self, x: jax.Array) -> jax.Array:
        return x @ self.embedding[...].T


class LayerNorm(Site):
    """LayerNorm with scale and bias, statistics in float32 (as torch does for half inputs)."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"scale": ("weight", (0,)), "bias": ("bias", (0,))}

    def __init__(self, features: int, *, eps: float, dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (features,), dtype, ("norm",), init="ones")
        self.bias = param(rngs, (features,), dtype, ("norm",), init="zeros")

    def site_widths(self) -> tuple[int, int]:
        return self.scale.shape[0], self.scale.shape[0]

    def folder(self, end: str) -> Fold | None:
        if end != OUT:
            return None
        return lambda alpha: (scale_axis(self.scale, alpha, 0), scale_axis(self.bias, alpha, 0))

    def shift_folder(self) -> Fold:
        return lambda shift: add_to(self.bias, shift)

    def forward(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class RMSNorm(Site):
    """RMSNorm: normalise in float32, cast back, then scale (HF's order of operations)."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"scale": ("weight", (0,))}

    def __init__(self, features: int, *, eps: float, dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (features,), dtype, ("norm",), init="ones")

    def site_widths(self) -> tuple[int, int]:
        return self.scale.shape[0], self.scale.shape[0]

    def folder(self, end: str) -> Fold | None:
        return (lambda alpha: scale_axis(self.scale, alpha, 0)) if end == OUT else None

    def normalize(self, x: jax.Array) -> jax.Array:
        """`x / rms(x)` in float32, before any scale."""
        h = x.astype(jnp.float32)
        return h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + self.eps)

    def forward(self, x: jax.Array) -> jax.Array:
        return self.scale[...] * self.normalize(x).astype(x.dtype)


class OffsetRMSNorm(RMSNorm):
    """RMSNorm scaled by `1 + w` (Gemma's, `w` initialised to zero), scaled in float32 and then cast.

    A subclass, not a flag on `RMSNorm`: the parameter, its HF name and the widths are the same, but the
    order of operations and the fold both differ, and a flag would branch in each of them.
    """

    def __init__(self, features: int, *, eps: float, dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (features,), dtype, ("norm",), init="zeros")

    def folder(self, end: str) -> Fold | None:
        """`alpha * (1 + w)` is `1 + w'` for `w' = alpha * (1 + w) - 1`, computed in float32; alpha 0 gives
        `w' = -1` exactly, so a silenced neuron stays exactly 0."""
        if end != OUT:
            return None

        def fold(alpha):
            w = self.scale[...].astype(jnp.float32)
            self.scale.set_value((alpha * (1.0 + w) - 1.0).astype(self.scale.dtype))

        return fold

    def forward(self, x: jax.Array) -> jax.Array:
        return (self.normalize(x) * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)


def scatter_image_features(embeds: jax.Array, input_ids: jax.Array, features: jax.Array, image_token: int) -> jax.Array:
    """Put image features into the `<image>` positions in row-major order (HF's `masked_scatter`), jit-friendly."""
    is_image = input_ids == image_token
    flat = features.reshape(-1, features.shape[-1]).astype(embeds.dtype)
    index = (jnp.cumsum(is_image.reshape(-1)) - 1).reshape(is_image.shape)
    gathered = jnp.take(flat, jnp.clip(index, 0, flat.shape[0] - 1), axis=0)
    return jnp.where(is_image[..., None], gathered, embeds)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


class Activation(Site):
    """An elementwise activation as its own module, so HF's `act_fn` / `activation_fn` / `act` are sites too."""

    def __init__(self, name: str, width: int):
        self.name, self.width, self.fn = name, width, ACTIVATIONS[name]

    def site_widths(self) -> tuple[int, int]:
        return self.width, self.width

    def forward(self, x: jax.Array) -> jax.Array:
        return self.fn(x)


def lm_head(text_spec, *, dtype, rngs: nnx.Rngs) -> Linear | None:
    """The LM head `[hidden, vocab]` of a text spec, or None when the checkpoint ties it to the embeddings."""
    if text_spec.tie_word_embeddings:
        return None
    return Linear(
        text_spec.hidden_size, text_spec.vocab_size, use_bias=False, axes=("embed", "vocab"), dtype=dtype, rngs=rngs
    )
