"""sgm_jax: neuron-level safety interventions (SGM / AurA) for multimodal LLMs in JAX/Flax NNX."""

from sgm_jax.capture import collect_responses
from sgm_jax.loading import build_model, load_model
from sgm_jax.sites import list_sites

__all__ = ["build_model", "collect_responses", "list_sites", "load_model"]
