"""Copies of a model that share its arrays but not its variables."""

from __future__ import annotations

import jax
from flax import nnx


def shallow_copy(model: nnx.Module) -> nnx.Module:
    """New modules and variables over the same (immutable) arrays: no device memory is copied, and setting a
    variable or an attribute on the copy leaves `model` alone. (`nnx.merge(*nnx.split(m))` would reuse m's
    variable objects.)"""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
