"""Concept steering as defenses (the `steer` stage): MOP (sparse coding over a concept dictionary) and DACO
(a dictionary-initialised SAE with annotated atoms). Each puts its edit on its site's output in the model a
configuration answers with, so it acts in every pass, prefill and decode, and in every likelihood measured."""

from __future__ import annotations

import dataclasses
from typing import Any

from sgm_jax.defenses.base import Defense
from sgm_jax.steering.annotate import Annotation
from sgm_jax.steering.dictionary import ConceptDictionary
from sgm_jax.steering.edit import steer
from sgm_jax.steering.sae import SAE
from sgm_jax.steering.sae_steering import SAEEdit
from sgm_jax.steering.sparse_coding import SparseCodingEdit, SparseCodingSettings


class Steer(Defense):
    """Base of the steering defenses: one edit, built once, on one site."""

    stage = "steer"
    site: str

    def edit(self):
        raise NotImplementedError

    def apply(self, model):
        if not hasattr(self, "_edit"):
            self._edit = self.edit()
        return steer(model, {self.site: self._edit})


class MOP(Steer):
    name = "mop"

    def __init__(self, dictionary: ConceptDictionary, settings: SparseCodingSettings | None = None):
        self.dictionary, self.site = dictionary, dictionary.site
        self.settings = settings or SparseCodingSettings()

    def edit(self):
        d = self.dictionary
        return SparseCodingEdit(d.atoms, d.center, d.undesirable, d.desirable, self.settings)

    def describe(self) -> dict[str, Any]:
        d = self.dictionary
        return {
            "name": self.name,
            "site": self.site,
            **dataclasses.asdict(self.settings),
            "undesirable": [c for c, u in zip(d.concepts, d.undesirable) if u],
            "desirable": [c for c, p in zip(d.concepts, d.desirable) if p],
        }


class DACO(Steer):
    name = "daco"

    def __init__(self, sae: SAE, annotation: Annotation, *, gamma: float = 0.0):
        annotation.check_for(sae)
        self.sae, self.annotation, self.gamma, self.site = sae, annotation, float(gamma), sae.site

    def edit(self):
        return SAEEdit(self.sae, self.annotation, gamma=self.gamma)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "site": self.site,
            "gamma": self.gamma,
            "sae": self.sae.digest(),
            **self.annotation.describe(),
        }
