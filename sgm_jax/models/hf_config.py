"""Specs back to Hugging Face config dicts, so an exported or orbax-saved model says what it is."""

from __future__ import annotations

from typing import Any

from sgm_jax.models.clip import ClipVisionSpec
from sgm_jax.models.llama import LlamaSpec
from sgm_jax.models.llava import LlavaSpec


def llama_config(spec: LlamaSpec) -> dict[str, Any]:
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers, "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads, "head_dim": spec.head_dim, "hidden_act": spec.hidden_act,
        "rms_norm_eps": spec.rms_norm_eps, "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
        "attention_bias": spec.attention_bias, "mlp_bias": spec.mlp_bias,
        "tie_word_embeddings": spec.tie_word_embeddings,
    }


def clip_vision_config(spec: ClipVisionSpec) -> dict[str, Any]:
    return {"model_type": "clip_vision_model", "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size, "num_hidden_layers": spec.num_hidden_layers,
            "num_attention_heads": spec.num_attention_heads, "num_channels": spec.num_channels,
            "image_size": spec.image_size, "patch_size": spec.patch_size, "hidden_act": spec.hidden_act,
            "layer_norm_eps": spec.layer_norm_eps}


def llava_config(spec: LlavaSpec) -> dict[str, Any]:
    text = llama_config(spec.text)
    del text["architectures"]
    layer = spec.vision_feature_layer
    return {
        "model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "text_config": text,
        "vision_config": clip_vision_config(spec.vision), "image_token_index": spec.image_token_index,
        "vision_feature_layer": layer if isinstance(layer, int) else list(layer),
        "vision_feature_select_strategy": spec.vision_feature_select_strategy,
        "projector_hidden_act": spec.projector_hidden_act,
        "multimodal_projector_bias": spec.multimodal_projector_bias,
        "tie_word_embeddings": spec.text.tie_word_embeddings, "image_seq_length": spec.features_per_image,
    }


def hf_config(spec) -> dict[str, Any]:
    """The HF config dict of a model spec (`model.spec`)."""
    if isinstance(spec, LlavaSpec):
        return llava_config(spec)
    if isinstance(spec, LlamaSpec):
        return llama_config(spec)
    raise TypeError(f"no HF config for {type(spec).__name__}")
