"""Annotating an SAE's atoms by their cosine distance to the dictionary's concept centroids.

One centroid of the undesirable concepts' atoms and one of the desirable ones (each the normalised mean of
its unit atoms). An atom whose cosine distance `1 - cos` to a centroid is at most `eta`, and smaller than its
distance to the other centroid, takes that label; every other atom is left alone. A small `eta` labels few
atoms (weak steering), a large one many (over-refusal).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sgm_jax.runtime.artifact_files import load_artifact, save_artifact
from sgm_jax.runtime.artifacts import ANNOTATION
from sgm_jax.runtime.errors import InputError, OptionError
from sgm_jax.steering.dictionary import ConceptDictionary
from sgm_jax.steering.sae import SAE

NONE, UNDESIRABLE, DESIRABLE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Annotation:
    labels: np.ndarray  # int8 [atoms]: NONE, UNDESIRABLE or DESIRABLE
    distance_undesirable: np.ndarray  # float32 [atoms]
    distance_desirable: np.ndarray
    eta: float
    sae_digest: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def undesirable(self) -> np.ndarray:
        return self.labels == UNDESIRABLE

    @property
    def desirable(self) -> np.ndarray:
        return self.labels == DESIRABLE

    def with_eta(self, eta: float) -> Annotation:
        """The same distances labelled under another threshold."""
        return dataclasses.replace(
            self, labels=label_atoms(self.distance_undesirable, self.distance_desirable, eta), eta=eta
        )

    def check_for(self, sae: SAE, where: str = "annotation") -> None:
        if sae.digest() != self.sae_digest:
            raise InputError(f"{where} was made for another SAE (digest {self.sae_digest}, this SAE's {sae.digest()})")

    def describe(self) -> dict[str, Any]:
        return {
            "eta": self.eta,
            "undesirable_atoms": int(self.undesirable.sum()),
            "desirable_atoms": int(self.desirable.sum()),
        }

    def save(self, path: str) -> None:
        tensors = {
            "labels": self.labels.astype(np.int8),
            "distance_undesirable": self.distance_undesirable,
            "distance_desirable": self.distance_desirable,
        }
        save_artifact(path, ANNOTATION, tensors, {**self.metadata, "eta": self.eta, "sae_digest": self.sae_digest})


def load_annotation(path: str, *, sae: SAE | None = None) -> Annotation:
    tensors, meta = load_artifact(path, ANNOTATION)
    rest = {k: v for k, v in meta.items() if k not in ("eta", "sae_digest")}
    annotation = Annotation(
        tensors["labels"],
        tensors["distance_undesirable"],
        tensors["distance_desirable"],
        float(meta["eta"]),
        meta["sae_digest"],
        rest,
    )
    if sae is not None:
        annotation.check_for(sae, path)
    return annotation


def label_atoms(dist_u: np.ndarray, dist_p: np.ndarray, eta: float) -> np.ndarray:
    labels = np.full(dist_u.shape, NONE, np.int8)
    labels[(dist_u <= eta) & (dist_u < dist_p)] = UNDESIRABLE
    labels[(dist_p <= eta) & (dist_p < dist_u)] = DESIRABLE
    return labels


def _centroid(atoms: np.ndarray) -> np.ndarray | None:
    if len(atoms) == 0:
        return None
    mean = atoms.astype(np.float64).mean(0)
    return mean / max(np.linalg.norm(mean), 1e-12)


def annotate(sae: SAE, dictionary: ConceptDictionary, eta: float) -> Annotation:
    """Label every atom of `sae` by the threshold rule against `dictionary`'s centroids."""
    if not 0.0 <= eta <= 2.0:
        raise OptionError(f"eta is a cosine distance, between 0 and 2; got {eta}")
    if dictionary.site != sae.site:
        raise InputError(f"the dictionary is for site {dictionary.site!r}, the SAE for {sae.site!r}")
    if not dictionary.undesirable.any():
        raise InputError("the dictionary labels no concept undesirable, so no atom can be steered away from")
    decoder = sae.params["W_dec"].astype(np.float64)
    decoder = decoder / np.maximum(np.linalg.norm(decoder, axis=1, keepdims=True), 1e-12)
    distances = []
    for mask in (dictionary.undesirable, dictionary.desirable):
        centroid = _centroid(dictionary.atoms[mask])
        distances.append(np.full(len(decoder), np.inf) if centroid is None else 1.0 - decoder @ centroid)
    dist_u, dist_p = (d.astype(np.float32) for d in distances)
    return Annotation(
        label_atoms(dist_u, dist_p, eta),
        dist_u,
        dist_p,
        float(eta),
        sae.digest(),
        {
            "undesirable_concepts": [c for c, u in zip(dictionary.concepts, dictionary.undesirable) if u],
            "desirable_concepts": [c for c, p in zip(dictionary.concepts, dictionary.desirable) if p],
        },
    )
