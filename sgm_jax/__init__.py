"""sgm_jax: neuron-level safety interventions (SGM / AurA) for multimodal LLMs in JAX/Flax NNX."""

from sgm_jax.loading import build_model, load_model

__all__ = ["build_model", "load_model"]
