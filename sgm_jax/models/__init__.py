"""Flax NNX ports whose module trees mirror the Hugging Face module names one-to-one."""

from sgm_jax.models.clip import CLIPVisionModel, ClipVisionSpec
from sgm_jax.models.llama import LlamaForCausalLM, LlamaModel, LlamaSpec
from sgm_jax.models.llava import LlavaForConditionalGeneration, LlavaSpec

__all__ = ["CLIPVisionModel", "ClipVisionSpec", "LlamaForCausalLM", "LlamaModel", "LlamaSpec",
           "LlavaForConditionalGeneration", "LlavaSpec"]
