"""Concept steering of the residual stream: concept dictionaries, MOP (sparse coding), dictionary-initialised
SAEs and DACO's annotated-atom steering, as edits `h -> f(h)` on a site's output."""

from sgm_jax.steering.annotate import Annotation, annotate, load_annotation
from sgm_jax.steering.dictionary import Concept, ConceptDictionary, build_dictionary, load_dictionary, read_concepts
from sgm_jax.steering.edit import ResidualEdit, edits_of, steer
from sgm_jax.steering.sae import SAE, SAEConfig, load_sae
from sgm_jax.steering.sae_steering import SAEEdit
from sgm_jax.steering.sae_training import TrainSettings, train_sae
from sgm_jax.steering.sparse_coding import SparseCodingEdit, SparseCodingSettings
from sgm_jax.steering.tokens import TokenStore, collect_tokens

__all__ = [
    "SAE",
    "Annotation",
    "Concept",
    "ConceptDictionary",
    "ResidualEdit",
    "SAEConfig",
    "SAEEdit",
    "SparseCodingEdit",
    "SparseCodingSettings",
    "TokenStore",
    "TrainSettings",
    "annotate",
    "build_dictionary",
    "collect_tokens",
    "edits_of",
    "load_annotation",
    "load_dictionary",
    "load_sae",
    "read_concepts",
    "steer",
    "train_sae",
]
