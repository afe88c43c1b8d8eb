"""sgm_jax: neuron-level safety interventions (SGM / AurA) for multimodal LLMs in JAX/Flax NNX."""

from sgm_jax.auroc import auroc
from sgm_jax.capture import collect_responses
from sgm_jax.defenses import answer
from sgm_jax.export import export_hf
from sgm_jax.generate import generate
from sgm_jax.interventions import Intervention, aura, compose, damp, det0, intervene, load_intervention, sweep
from sgm_jax.loading import build_model, load_model
from sgm_jax.scores import load_scores
from sgm_jax.sites import list_sites

__all__ = [
    "Intervention",
    "answer",
    "auroc",
    "aura",
    "build_model",
    "collect_responses",
    "compose",
    "damp",
    "det0",
    "export_hf",
    "generate",
    "intervene",
    "list_sites",
    "load_intervention",
    "load_model",
    "load_scores",
    "sweep",
]
