"""Flax NNX ports whose module trees mirror the Hugging Face module names one-to-one, one module per family
(registered in `sgm_jax.models.registry`)."""

from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.models.registry import FAMILIES

__all__ = ["FAMILIES", "CausalLM"]
