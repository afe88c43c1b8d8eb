"""MOP: training-free concept steering by sparse coding over a concept dictionary (PaCE extended to MLLMs).

Per token, at the edited site: `x = h - mu` (the activation about the stimuli's mean: concept atoms are
differences of means, so the shared part of every activation is no concept), `x_hat = x / ||x||`, an
elastic-net code `c` of `x_hat` over the dictionary's atoms (FISTA, optionally screened to each token's top-M
atoms), rescaled by `||x||`; then the undesirable atoms' components are removed and, with `gamma > 0`, the
desirable atoms are promoted:

    h' = h - sum_{k in U} c_k d_k + gamma ||x|| sum_{k in P} d_k

What is left of `x` outside the undesirable atoms (the other atoms and the fit's residual) is kept as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgm_jax.models.site import Steering
from sgm_jax.runtime.errors import OptionError
from sgm_jax.steering.edit import ResidualEdit
from sgm_jax.steering.fista import elastic_net, lipschitz, screened_elastic_net

GRAM_BYTES = 1 << 28  # the largest atoms x atoms matrix an edit keeps (256 MB: 8k atoms)


@dataclasses.dataclass(frozen=True)
class SparseCodingSettings:
    """The solver's and the edit's settings; PaCE's `lam = 0.05`, `tau = 0.95`. `screen` 0 codes over every
    atom; otherwise over each token's top-`screen` atoms plus every labelled one."""

    lam: float = 0.05
    tau: float = 0.95
    iters: int = 60
    screen: int = 0
    gamma: float = 0.0
    positive_only: bool = False

    def __post_init__(self):
        if not 0.0 < self.tau < 1.0:
            raise OptionError(f"MOP tau must lie strictly between 0 and 1, got {self.tau}")
        if self.lam <= 0 or self.iters < 1 or self.screen < 0:
            raise OptionError(f"MOP needs lam > 0, iters >= 1 and screen >= 0, got {self}")


class SparseCodingEdit(ResidualEdit):
    """The MOP edit of one site. `atoms` `[m, width]` (unit rows), `center` `[width]`, `undesirable` /
    `desirable` bool `[m]`."""

    def __init__(
        self,
        atoms: np.ndarray,
        center: np.ndarray,
        undesirable: np.ndarray,
        desirable: np.ndarray,
        settings: SparseCodingSettings,
    ):
        atoms = np.asarray(atoms, np.float32)
        self.width = int(atoms.shape[1])
        self.settings = settings
        labelled = int(np.sum(undesirable | desirable))
        if settings.screen and settings.screen < labelled:
            raise OptionError(
                f"MOP screen={settings.screen} keeps fewer atoms than the {labelled} labelled ones; use at least that"
            )
        self.screen = min(settings.screen, atoms.shape[0]) if settings.screen else 0
        self.atoms = Steering(jax.device_put(np.asarray(atoms, np.float32)))
        self.center = Steering(jax.device_put(np.asarray(center, np.float32)))
        self.undesirable = Steering(jax.device_put(np.asarray(undesirable, np.float32)))
        self.desirable = Steering(jax.device_put(np.asarray(desirable, np.float32)))
        self.lipschitz = Steering(lipschitz(jnp.asarray(atoms)))
        # Gram-form iterations cost (atoms coded)^2 a row against 2 x atoms x width directly: kept when cheaper,
        # and when the [m, m] matrix stays small (a screened dictionary of 15k atoms would need 0.9 GB of it).
        coded, m = self.screen or atoms.shape[0], atoms.shape[0]
        cheaper = coded < 2 * self.width and m * m * 4 <= GRAM_BYTES
        self.gram = Steering(jnp.asarray(atoms @ atoms.T)) if cheaper else None

    def codes(self, x: jax.Array) -> jax.Array:
        """The elastic-net codes `[..., m]` of `x` (each row scaled to unit norm, codes scaled back)."""
        s = self.settings
        atoms = self.atoms[...]
        norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
        unit = x / jnp.maximum(norm, 1e-12)
        gram = None if self.gram is None else self.gram[...]
        solve = dict(lam=s.lam, tau=s.tau, iters=s.iters, lipschitz_constant=self.lipschitz[...], gram=gram)
        if self.screen:
            keep = (self.undesirable[...] + self.desirable[...]) > 0
            codes = screened_elastic_net(atoms, unit, size=self.screen, keep=keep, **solve)
        else:
            codes = elastic_net(atoms, unit, **solve)
        return codes * norm

    def __call__(self, h: jax.Array) -> jax.Array:
        z = h.astype(jnp.float32)
        x = z - self.center[...]
        codes = self.codes(x)
        if self.settings.positive_only:
            codes = jnp.maximum(codes, 0.0)
        atoms = self.atoms[...]
        removed = (codes * self.undesirable[...]) @ atoms
        promoted = self.settings.gamma * jnp.linalg.norm(x, axis=-1, keepdims=True) * (self.desirable[...] @ atoms)
        return (z - removed + promoted).astype(h.dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "edit": "mop",
            **dataclasses.asdict(self.settings),
            "atoms": int(self.atoms.shape[0]),
            "undesirable": int(np.sum(np.asarray(self.undesirable[...]))),
            "desirable": int(np.sum(np.asarray(self.desirable[...]))),
        }
