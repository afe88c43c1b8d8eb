"""DACO's steering edit: cancel the undesirable atoms an SAE finds in each token, promote the desirable ones.

    c = f(z);   c_hat_j = -c_j (undesirable),  +gamma (desirable),  0 otherwise;   z' = z + c_hat W_dec

The edit is additive, so the SAE's reconstruction error stays in `z'`. Only the labelled atoms' decoder rows
are kept (the correction needs no others); the encoder runs in full because TopK needs every atom's score.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgm_jax.models.site import Steering
from sgm_jax.steering.annotate import Annotation
from sgm_jax.steering.edit import ResidualEdit
from sgm_jax.steering.sae import SAE, encode


class SAEEdit(ResidualEdit):
    def __init__(self, sae: SAE, annotation: Annotation, *, gamma: float = 0.0):
        annotation.check_for(sae)
        self.config = sae.config
        self.width = sae.config.width
        self.gamma = float(gamma)
        labelled = np.flatnonzero(annotation.undesirable | annotation.desirable)
        self.W_enc = Steering(jax.device_put(np.asarray(sae.params["W_enc"])))
        self.b_enc = Steering(jax.device_put(np.asarray(sae.params["b_enc"])))
        self.b_dec = Steering(jax.device_put(np.asarray(sae.params["b_dec"])))
        self.index = Steering(jax.device_put(np.asarray(labelled, np.int32)))
        self.rows = Steering(jax.device_put(np.asarray(sae.params["W_dec"][labelled])))
        self.undesirable = Steering(jax.device_put(np.asarray(annotation.undesirable[labelled])))
        self.counts = (int(annotation.undesirable.sum()), int(annotation.desirable.sum()))
        self.eta = annotation.eta

    def __call__(self, h: jax.Array) -> jax.Array:
        z = h.astype(jnp.float32)
        params = {name: getattr(self, name)[...] for name in ("W_enc", "b_enc", "b_dec")}
        codes = jnp.take(encode(params, z, self.config), self.index[...], axis=-1)
        correction = jnp.where(self.undesirable[...], -codes, self.gamma)
        return (z + correction @ self.rows[...]).astype(h.dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "edit": "daco",
            "gamma": self.gamma,
            "eta": self.eta,
            "undesirable_atoms": self.counts[0],
            "desirable_atoms": self.counts[1],
            "atoms": self.config.atoms,
            "kind": self.config.kind,
        }
