"""An intervention: per-neuron multipliers `alpha` by site name, optional affine transports (Linear-AcT, Mean-AcT),
and the metadata that says how they were made.

Saved as safetensors (one float32 vector per site, `SITE@transport` `[4, width]` per transported site) with the
metadata as JSON in the file header: no pickle, readable from any language.
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
TRANSPORT_SUFFIX = "@transport"
TRANSPORT_ROWS = ("scale", "shift", "low", "high")


def identity_transport(width: int) -> np.ndarray:
    """The transport that changes nothing: scale 1, shift 0 (its support, all reals, then does not matter)."""
    return np.stack([np.ones(width), np.zeros(width), np.full(width, -np.inf), np.full(width, np.inf)]).astype(
        np.float32
    )


def transport_changes(transport: np.ndarray) -> np.ndarray:
    """Which neurons a `[4, width]` transport moves: scale or shift not the identity, on a support not empty."""
    scale, shift, low, high = transport
    return ((scale != 1) | (shift != 0)) & (low < high)


@dataclasses.dataclass
class Intervention:
    """`alphas[site]` multiplies that site's output (or input, for `site:in`) per neuron; 1 leaves it alone.

    Alphas are finite and non-negative wherever they come from (a file, the command line or Python): 0 silences
    a neuron, and a negative alpha, which would flip its sign, is refused rather than clipped.

    `transports[site]` (`[4, width]`: scale, shift, low, high; output sites only) then maps each neuron's gated
    output `a` to `scale a + shift` where `low < a < high` and leaves it elsewhere: Linear-AcT's affine transport
    inside the source's support, Mean-AcT's shift everywhere. AurA is the transport with shift 0 on all reals."""

    alphas: dict[str, np.ndarray]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    transports: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

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
        self.transports = {site: _checked_transport(site, t, clean.get(site)) for site, t in self.transports.items()}

    @property
    def sites(self) -> list[str]:
        return list(dict.fromkeys([*self.alphas, *self.transports]))

    def changed(self) -> dict[str, np.ndarray]:
        """Per site, which neurons this intervention changes (alpha != 1, or a transport that moves them)."""
        masks = {site: a != 1 for site, a in self.alphas.items()}
        for site, t in self.transports.items():
            masks[site] = masks[site] | transport_changes(t) if site in masks else transport_changes(t)
        return masks

    def num_changed(self) -> int:
        """How many neurons this intervention actually changes."""
        return int(sum(m.sum() for m in self.changed().values()))

    def with_strength(self, strength: float) -> Intervention:
        """`alpha_s = 1 - s (1 - alpha)`, clipped at 0: 0 is off, 1 as learned, >1 stronger. A transport's scale
        goes the same way and its shift becomes `s shift`: Linear-AcT's `lambda T(a) + (1 - lambda) a`."""
        if strength < 0:
            raise InterventionError(f"strength must be >= 0, got {strength}")

        def scaled(a):
            return np.maximum(1.0 - strength * (1.0 - a), 0.0).astype(np.float32)

        transports = {}
        for site, (scale, shift, low, high) in self.transports.items():
            transports[site] = np.stack([scaled(scale), strength * shift, low, high]).astype(np.float32)
        metadata = {**self.metadata, "strength": float(strength) * self.metadata.get("strength", 1.0)}
        return Intervention({s: scaled(a) for s, a in self.alphas.items()}, metadata, transports)

    def save(self, path: str) -> None:
        tensors = {site: np.ascontiguousarray(a) for site, a in self.alphas.items()}
        tensors.update({site + TRANSPORT_SUFFIX: np.ascontiguousarray(t) for site, t in self.transports.items()})
        meta = {KIND_KEY: INTERVENTION, METADATA_KEY: json.dumps(self.metadata)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _checked_transport(site: str, transport, alpha: np.ndarray | None) -> np.ndarray:
    t = np.asarray(transport, np.float32)
    if t.ndim != 2 or t.shape[0] != len(TRANSPORT_ROWS):
        raise InterventionError(
            f"transport for site {site!r} must be [4, width] (rows {', '.join(TRANSPORT_ROWS)}), got shape {t.shape}"
        )
    if alpha is not None and alpha.shape[0] != t.shape[1]:
        raise InterventionError(
            f"site {site!r}: alpha has {alpha.shape[0]} values, its transport {t.shape[1]} (they must agree)"
        )
    if site.endswith(":in"):
        raise InterventionError(f"site {site!r}: a transport acts on a site's output, not its input")
    scale, shift, low, high = t
    for name, row in (("scale", scale), ("shift", shift)):
        if not np.isfinite(row).all():
            raise InterventionError(f"transport for site {site!r}: {name} holds NaN or inf")
    if (scale < 0).any() or np.isnan(low).any() or np.isnan(high).any():
        raise InterventionError(f"transport for site {site!r}: scales must be >= 0 and the support bounds not NaN")
    return t


def load_intervention(path: str) -> Intervention:
    """An intervention saved by `Intervention.save`."""
    check_kind(path, INTERVENTION)
    with safe_open(path, "numpy") as f:
        metadata = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    transports = {k[: -len(TRANSPORT_SUFFIX)]: t for k, t in tensors.items() if k.endswith(TRANSPORT_SUFFIX)}
    alphas = {k: t for k, t in tensors.items() if not k.endswith(TRANSPORT_SUFFIX)}
    return Intervention(alphas, metadata, transports)


def compose(*interventions: Intervention) -> Intervention:
    """One intervention doing all of them, in order: alphas multiply at shared sites, and a later intervention's
    transport follows the earlier ones' alphas. Nothing can follow a transport at its site (an affine map on part
    of the line, then a gate, is no longer one of these): that is refused."""
    alphas: dict[str, np.ndarray] = {}
    transports: dict[str, np.ndarray] = {}
    for iv in interventions:
        for site in iv.sites:
            if site in transports:
                raise InterventionError(
                    f"cannot compose: site {site!r} carries a transport from an earlier intervention, and "
                    "nothing can follow a transport at its site; put the transport last"
                )
        for site, alpha in iv.alphas.items():
            if site in alphas and alphas[site].shape != alpha.shape:
                raise InterventionError(
                    f"cannot compose: site {site!r} has width {alphas[site].shape[0]} in one "
                    f"intervention and {alpha.shape[0]} in another"
                )
            alphas[site] = alphas[site] * alpha if site in alphas else alpha.copy()
        for site, transport in iv.transports.items():
            if site in alphas and alphas[site].shape[0] != transport.shape[1]:
                raise InterventionError(
                    f"cannot compose: site {site!r} has width {alphas[site].shape[0]} in one "
                    f"intervention and {transport.shape[1]} in another"
                )
            transports[site] = transport.copy()
    parts = [iv.metadata for iv in interventions]
    return Intervention(alphas, {"method": "compose", "parts": parts}, transports)
