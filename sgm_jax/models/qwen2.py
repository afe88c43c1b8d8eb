"""Qwen2's decoder: Llama's, with biases on q/k/v only and (in Qwen2-VL) multimodal RoPE. Also the plain
`Qwen2ForCausalLM` text family."""

from __future__ import annotations

import dataclasses
from typing import Any

from sgm_jax.models.config import UnsupportedConfigError, check_fields, require
from sgm_jax.models.llama import LlamaForCausalLM, LlamaSpec, decoder_shape

# The text configs of the Qwen2 family; Qwen2-VL's nests one under `text_config`.
TEXT_TYPES = ("qwen2", "qwen2_vl_text", "qwen2_5_vl_text")


def qwen2_text_spec(cfg: dict[str, Any], *, where: str, tie_word_embeddings: bool | None = None) -> Qwen2Spec:
    """A Qwen2 text config (plain, or Qwen2-VL's) as the Llama decoder's spec, strictly."""
    require(where, "model_type", cfg.get("model_type"), TEXT_TYPES)
    if cfg.get("use_sliding_window"):
        raise UnsupportedConfigError(f"{where}: use_sliding_window=True (sliding-window attention) is not supported")
    layer_types = cfg.get("layer_types") or []
    other = sorted(set(layer_types) - {"full_attention"})
    if other:
        raise UnsupportedConfigError(f"{where}: layer_types {other} are not supported (only full_attention)")
    heads = cfg["num_attention_heads"]
    if cfg.get("head_dim") not in (None, cfg["hidden_size"] // heads):
        raise UnsupportedConfigError(
            f"{where}: head_dim={cfg['head_dim']} differs from hidden_size / num_attention_heads, which Qwen2 uses"
        )
    # With sliding windows off, transformers builds full-attention masks whatever these say.
    reading = {k: v for k, v in cfg.items() if k not in ("layer_types", "sliding_window")}
    check_fields(
        reading,
        where=where,
        used=[
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "hidden_act",
            "rms_norm_eps",
            "rope_parameters",
            "tie_word_embeddings",
            "head_dim",
        ],
        inert=["use_sliding_window", "max_window_layers"],
    )
    rope = dict(cfg.get("rope_parameters") or {"rope_type": "default", "rope_theta": 10000.0})
    rope.pop("type", None)  # old hub configs' stale `"type": "mrope"`, which transformers ignores
    require(where, "rope_parameters.rope_type", rope.get("rope_type"), ["default"])
    extra = sorted(set(rope) - {"rope_type", "rope_theta", "mrope_section"})
    if extra:
        raise UnsupportedConfigError(f"{where}: rope_parameters fields sgm_jax does not implement: {extra}")
    head_dim = cfg["hidden_size"] // heads
    mrope = ()
    if cfg["model_type"] != "qwen2":  # transformers defaults the section when the config leaves it out
        mrope = tuple(int(n) for n in rope.get("mrope_section", (16, 24, 24)))
        if len(mrope) != 3 or sum(mrope) != head_dim // 2:
            raise UnsupportedConfigError(
                f"{where}: rope_parameters.mrope_section={list(mrope)} must be 3 numbers summing to head_dim/2 = "
                f"{head_dim // 2}"
            )
    return Qwen2Spec(
        **decoder_shape(cfg, where, head_dim, tie_word_embeddings),
        rope_theta=float(rope["rope_theta"]),
        attention_bias=True,
        o_proj_bias=False,
        mlp_bias=False,
        mrope_section=mrope,
    )


def qwen2_text_config(spec: LlamaSpec, model_type: str) -> dict[str, Any]:
    """The Qwen2 text config dict `qwen2_text_spec` reads back from."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.mrope_section:
        rope["mrope_section"] = list(spec.mrope_section)
    return {
        "model_type": model_type,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "hidden_act": spec.hidden_act,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_parameters": rope,
        "use_sliding_window": False,
        "tie_word_embeddings": spec.tie_word_embeddings,
    }


@dataclasses.dataclass(frozen=True)
class Qwen2Spec(LlamaSpec):
    """The Llama decoder's spec, read from and written as a Qwen2 config."""

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, where: str = "config") -> Qwen2Spec:
        require(where, "model_type", cfg.get("model_type"), ["qwen2"])
        return qwen2_text_spec(cfg, where=where)

    def to_hf(self) -> dict[str, Any]:
        return {**qwen2_text_config(self, "qwen2"), "architectures": ["Qwen2ForCausalLM"]}


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 / Qwen2.5 text LMs (`Qwen2ForCausalLM`): the Llama port with Qwen2's biases."""

    model_type, spec_class = "qwen2", Qwen2Spec
