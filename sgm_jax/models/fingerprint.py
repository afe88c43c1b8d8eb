"""A cheap identity for a model's weights (and gates): what a response store was made with."""

from __future__ import annotations

import hashlib

import jax
import numpy as np
from flax import nnx

from sgm_jax.models.site import Gate

_SAMPLES_PER_TENSOR = 256


def model_fingerprint(model: nnx.Module) -> str:
    """Hash of every variable's path, shape, dtype and a strided sample of its values, and of every gate in full.

    Reading a few hundred values per weight (not all 7B) tells checkpoints apart in practice, and costs
    milliseconds even when the weights live on a TPU mesh; gates are small and one changed neuron makes
    another intervention, so each gate is hashed whole. The samples are taken in one compiled program per model
    structure (eager slicing would compile three small programs per weight shape).
    """
    digest = hashlib.sha256()
    gates = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, Gate))}
    named = [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))]
    samples = _samples([leaf for name, leaf in named if name not in gates])
    for name, leaf in named:
        flat = np.asarray(leaf).reshape(-1) if name in gates else samples.pop(0)
        digest.update(f"{name}|{leaf.shape}|{leaf.dtype}|".encode())
        digest.update(np.asarray(flat, np.float32).tobytes())
    return digest.hexdigest()[:32]


@jax.jit
def _samples(leaves: list[jax.Array]) -> list[jax.Array]:
    """A strided sample of at most `_SAMPLES_PER_TENSOR` values of each array (flattened)."""
    flats = [leaf.reshape(-1) for leaf in leaves]
    return [flat[:: max(1, flat.shape[0] // _SAMPLES_PER_TENSOR)][:_SAMPLES_PER_TENSOR] for flat in flats]
