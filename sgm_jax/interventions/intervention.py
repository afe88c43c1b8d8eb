"""An intervention: per-neuron multipliers `alpha` by site name, with the metadata that says how they were made.

Saved as safetensors (one float32 vector per site) with the metadata as JSON in the
file header: no pickle, readable from any language.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from sgm_jax.runtime.artifacts import INTERVENTION, KIND_KEY, check_kind
from sgm_jax.runtime.atomic import atomic_write
from sgm_jax.runtime.errors import InterventionError

METADATA_KEY = "sgm_jax.intervention"


@dataclasses.dataclass
class Intervention:
    """`alphas[site]` multiplies that site's output (or input, for `site:in`) per neuron; 1 leaves it alone.

    Alphas are finite and non-negative wherever they come from (a file, the command line or Python): 0 silences
    a neuron, and a negative alpha, which would flip its sign, is refused rather than clipped."""

    alphas: dict[str, np.ndarray]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        clean = {}
        for site, alpha in self.alphas.items():
            alpha = np.asarray(alpha, np.float32)
            if alpha.ndim != 1:
                raise InterventionError(f"alpha for site {site!r} must be 1-D [width], got shape {alpha.shape}")
            if not np.isfinite(alpha).all():
                bad = np.flatnonzero(~np.isfinite(alpha))
                raise InterventionError(
                    f"alpha for site {site!r} holds NaN or inf at {len(bad)} neuron(s), first {bad[0]}"
                )
            if (alpha < 0).any():
                bad = np.flatnonzero(alpha < 0)
                raise InterventionError(
                    f"alpha for site {site!r} is negative at {len(bad)} neuron(s) (first {bad[0]}: {alpha[bad[0]]}); "
                    "alphas must be >= 0 (0 silences a neuron)"
                )
            clean[site] = alpha
        self.alphas = clean

    @property
    def sites(self) -> list[str]:
        return list(self.alphas)

    def num_changed(self) -> int:
        """How many neurons this intervention actually changes (alpha != 1)."""
        return int(sum((a != 1).sum() for a in self.alphas.values()))

    def with_strength(self, strength: float) -> Intervention:
        """`alpha_s = 1 - s (1 - alpha)`, clipped at 0: 0 is off, 1 as learned, >1 stronger."""
        if strength < 0:
            raise InterventionError(f"strength must be >= 0, got {strength}")
        alphas = {s: np.maximum(1.0 - strength * (1.0 - a), 0.0).astype(np.float32) for s, a in self.alphas.items()}
        return Intervention(alphas, {**self.metadata, "strength": float(strength) * self.metadata.get("strength", 1.0)})

    def save(self, path: str) -> None:
        tensors = {site: np.ascontiguousarray(a) for site, a in self.alphas.items()}
        meta = {KIND_KEY: INTERVENTION, METADATA_KEY: json.dumps(self.metadata)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_intervention(path: str) -> Intervention:
    """An intervention saved by `Intervention.save`."""
    check_kind(path, INTERVENTION)
    with safe_open(path, "numpy") as f:
        metadata = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
        return Intervention({k: f.get_tensor(k) for k in f.keys()}, metadata)


def compose(*interventions: Intervention) -> Intervention:
    """One intervention doing all of them: alphas multiply at shared sites."""
    alphas: dict[str, np.ndarray] = {}
    for iv in interventions:
        for site, alpha in iv.alphas.items():
            if site in alphas and alphas[site].shape != alpha.shape:
                raise InterventionError(
                    f"cannot compose: site {site!r} has width {alphas[site].shape[0]} in one "
                    f"intervention and {alpha.shape[0]} in another"
                )
            alphas[site] = alphas[site] * alpha if site in alphas else alpha.copy()
    return Intervention(alphas, {"method": "compose", "parts": [iv.metadata for iv in interventions]})
