"""Weight orthogonalisation (Arditi et al., NeurIPS 2024): a direction ablated from the residual stream, folded
into the weights that write the stream, so the model exports as a plain Hugging Face checkpoint.

Every write into a decoder's stream comes from the token embeddings or from a layer's attention or MLP output
projection. With `r` unit, `W <- W - (W r) r^T` on each of them (and `b <- b - (b . r) r` on their biases) makes
every write, hence the stream, orthogonal to `r`: exactly what ablating `r` at each write does. A head tied to the
embeddings is untied first, keeping the original table as the head, since the paper leaves the logits' read of
the final state alone.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.models.copying import shallow_copy
from sgm_jax.models.layers import Linear
from sgm_jax.models.site import child
from sgm_jax.responses.sites import stream_writers
from sgm_jax.runtime.errors import InputError, SgmJaxError


class NotOrthogonalizableError(SgmJaxError, ValueError):
    """A model whose stream has writers this fold does not cover (image features)."""


def _project_out(variable: nnx.Variable, r: np.ndarray, axis: int) -> None:
    """Remove the component along `r` from the vectors of `variable` that lie along `axis` (float64)."""
    value = np.asarray(variable[...], np.float64)
    moved = np.moveaxis(value, axis, -1)
    moved = moved - (moved @ r)[..., None] * r
    variable.set_value(jnp.asarray(np.moveaxis(moved, -1, axis), variable.dtype))


def orthogonalized(model: nnx.Module, direction: np.ndarray) -> nnx.Module:
    """A copy of the text decoder `model` whose weights write nothing along `direction`; `model` is left as it
    was. Equal to `sgm_jax.steering.refusal.ablated(model, direction)` up to rounding."""
    if model.image_token_id is not None:
        raise NotOrthogonalizableError(
            f"{type(model).__name__}: image features enter the stream through the family's projector, which this "
            "fold does not cover; orthogonalisation exports text decoders (Llama, Qwen2), and the ablation edit "
            "(sgm_jax.steering.refusal.ablated) runs on every family"
        )
    r = np.asarray(direction, np.float64)
    if r.shape != (model.spec.hidden_size,) or not np.isfinite(r).all() or not np.linalg.norm(r):
        raise InputError(
            f"the direction must be a finite, non-zero vector of the model's {model.spec.hidden_size} dimensions, "
            f"got shape {r.shape}"
        )
    r = r / np.linalg.norm(r)
    folded = shallow_copy(model)
    embed = folded.decoder.embed_tokens
    if folded.lm_head is None:  # untie: the head keeps reading the original table
        head = Linear(
            *embed.embedding.shape[::-1],
            use_bias=False,
            axes=("embed", "vocab"),
            dtype=embed.embedding.dtype,
            rngs=nnx.Rngs(0),
        )
        head.kernel.set_value(embed.embedding[...].T)
        folded.lm_head = nnx.data(head)
        folded.decoder.spec = dataclasses.replace(folded.decoder.spec, tie_word_embeddings=False)
    _project_out(embed.embedding, r, 1)
    for site in stream_writers(folded):
        linear = child(folded, site + "." + child(folded, site).output_linear)
        _project_out(linear.kernel, r, 1)
        if linear.bias is not None:
            _project_out(linear.bias, r, 0)
    return folded
