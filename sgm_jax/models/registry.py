"""The model families sgm_jax ports, by Hugging Face `model_type`.

A family lives in its own module (a `CausalLM` subclass with its spec, layouts and input rules); adding one
is that module plus one entry here.
"""

from __future__ import annotations

from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.models.config import UnsupportedConfigError
from sgm_jax.models.internvl import InternVLForConditionalGeneration
from sgm_jax.models.llama import LlamaForCausalLM
from sgm_jax.models.llava import LlavaForConditionalGeneration
from sgm_jax.models.llava_next import LlavaNextForConditionalGeneration
from sgm_jax.models.mllama import MllamaForConditionalGeneration
from sgm_jax.models.qwen2 import Qwen2ForCausalLM
from sgm_jax.models.qwen2_vl import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

FAMILIES: dict[str, type[CausalLM]] = {
    cls.model_type: cls
    for cls in (
        InternVLForConditionalGeneration,
        LlamaForCausalLM,
        LlavaForConditionalGeneration,
        LlavaNextForConditionalGeneration,
        MllamaForConditionalGeneration,
        Qwen2ForCausalLM,
        Qwen2VLForConditionalGeneration,
        Qwen2_5_VLForConditionalGeneration,
    )
}


def family(model_type: str | None) -> type[CausalLM]:
    """The model class registered for `model_type`, or an error listing the supported ones."""
    if model_type not in FAMILIES:
        raise UnsupportedConfigError(f"model_type={model_type!r} is not supported (supported: {sorted(FAMILIES)})")
    return FAMILIES[model_type]
