"""The methods that turn expert scores (per-neuron AUROC) into interventions: AurA/SGM, Damp, Det0; and
Linear-AcT / Mean-AcT, whose transports come from the responses themselves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sgm_jax.interventions.intervention import Intervention
from sgm_jax.runtime.errors import InterventionError

# What a scores file's metadata passes on to the intervention made from it.
_PROVENANCE = ("model", "model_fingerprint", "pooling", "tokens", "dataset", "dataset_hash")


def _checked(scores: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not scores:
        raise InterventionError("no scores given")
    out = {}
    for site, s in scores.items():
        s = np.asarray(s, np.float32)
        if s.ndim != 1 or not np.isfinite(s).all() or (s < 0).any() or (s > 1).any():
            raise InterventionError(f"scores for site {site!r} must be a 1-D vector of AUROC values in [0, 1]")
        out[site] = s
    return out


def _provenance(source: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: source[k] for k in _PROVENANCE if source and k in source}


def aura(scores: Mapping[str, Any], threshold: float = 0.5, *, source: Mapping[str, Any] | None = None) -> Intervention:
    """AurA / SGM: `alpha = 1 - 2 (AUROC - 0.5)` for neurons whose AUROC exceeds `threshold`, 1 elsewhere.

    0.5 (AurA) only damps; the SGM release used 0.3, which also amplifies neurons with
    AUROC in (0.3, 0.5), up to 1.4x. `source` is the scores file's metadata, kept for provenance.
    """
    scores = _checked(scores)
    alphas = {
        site: np.where(s > threshold, 1.0 - 2.0 * (s - 0.5), 1.0).astype(np.float32) for site, s in scores.items()
    }
    experts = int(sum((s > threshold).sum() for s in scores.values()))
    return Intervention(
        alphas,
        {
            "method": "aura",
            "threshold": float(threshold),
            "amplifies": threshold < 0.5,
            "experts": experts,
            **_provenance(source),
        },
    )


def _top_k(scores: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Boolean masks of the global top-k neurons by AUROC across all sites (ties: earlier site, lower index)."""
    total = sum(len(s) for s in scores.values())
    if not 0 <= k <= total:
        raise InterventionError(f"k={k} must be between 0 and the {total} scored neurons")
    flat = np.concatenate(list(scores.values()))
    chosen = np.zeros(total, bool)
    chosen[np.argsort(-flat, kind="stable")[:k]] = True
    masks, start = {}, 0
    for site, s in scores.items():
        masks[site] = chosen[start : start + len(s)]
        start += len(s)
    return masks


def damp(scores: Mapping[str, Any], k: int, alpha: float, *, source: Mapping[str, Any] | None = None) -> Intervention:
    """Damp: a fixed `alpha` on the global top-k neurons by AUROC, 1 elsewhere."""
    if alpha < 0:
        raise InterventionError(f"alpha must be >= 0, got {alpha}")
    masks = _top_k(_checked(scores), k)
    alphas = {site: np.where(m, alpha, 1.0).astype(np.float32) for site, m in masks.items()}
    return Intervention(alphas, {"method": "damp", "k": int(k), "alpha": float(alpha), **_provenance(source)})


def det0(scores: Mapping[str, Any], k: int, *, source: Mapping[str, Any] | None = None) -> Intervention:
    """Det0: switch the global top-k neurons by AUROC off (alpha 0)."""
    iv = damp(scores, k, 0.0, source=source)
    iv.metadata.update(method="det0")
    del iv.metadata["alpha"]
    return iv


def transport(
    transports: Mapping[str, Any], method: str, *, strength: float = 1.0, source: Mapping[str, Any] | None = None
) -> Intervention:
    """Linear-AcT or Mean-AcT: the `[4, width]` transports of `sgm_jax.experts.transport` as an intervention at
    strength `lambda` (`lambda T(a) + (1 - lambda) a`; 1 as fitted)."""
    iv = Intervention({}, {"method": method, **_provenance(source)}, dict(transports))
    return iv.with_strength(strength) if strength != 1.0 else iv
